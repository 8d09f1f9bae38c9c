"""The experiment protocol and the run contract every recipe kind shares.

An experiment (one per `kind:`) says WHAT to compute:
    validate()            load every input (data, model reachable, prompt lengths); LabError; writes nothing
    states()              the model states, in order (e.g. aligned, attack-en@s0, ...)
    prepare(ctx)          shared artifacts before the states (canary, masks); cache them under ctx.out_dir
    run_state(name, ctx)  compute one state -> StateResult (json-able record + generations)
    assemble(results, ctx) the kind's metrics from every state's record (and its generations)
    write_report(out, m)  report.md (+ figures) from the metrics

`run()` says HOW, identically for every kind: validate -> run dir keyed by the resolved config
(a dir holding another config stops with the differing keys) -> per-state cache (states/<name>.json,
written atomically after its generations, so kill -9 loses at most the state in progress) ->
fine-tunes that diverge are recorded as diverged, never as results -> report.md, generations.jsonl,
config.yaml, metrics.json (last: its presence marks a finished run) -> tracking.

How to add a recipe kind: subclass `Experiment` in lab/experiments/<kind>.py with a `Recipe` model
(subclass of lab.config.RecipeBase with `kind: Literal["<kind>"]`), implement the methods above, and
register the class in `lab/experiments/__init__.py` KINDS. `lab run` then gives it the whole contract.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from lab.config import EvalConfig, RecipeBase, config_diff, dump_recipe
from lab.data import atomic_write_text, read_jsonl, write_json, write_jsonl
from lab.errors import LabError
from lab.experiments.checks import canary, check_loading, check_model_and_prompts, context_length  # noqa: F401


@dataclass
class StateResult:
    record: dict                      # json-able: the state's metrics and whatever assemble() needs
    generations: list[dict] = field(default_factory=list)


@dataclass
class RunContext:
    out_dir: Path
    log: object = print
    workers: int = 1
    worker: bool = False              # True inside a worker process (prepare() skips one-off checks)

    @property
    def states_dir(self) -> Path:
        return self.out_dir / "states"

    def done(self, name: str) -> bool:
        return (self.states_dir / f"{name}.json").is_file()

    def load(self, name: str) -> dict:
        return json.loads((self.states_dir / f"{name}.json").read_text(encoding="utf-8"))


class Experiment:
    kind: ClassVar[str]
    Recipe: ClassVar[type[RecipeBase]]
    serial_states: ClassVar[tuple[str, ...]] = ("aligned",)  # run before the others, in the main process

    def __init__(self, recipe: RecipeBase, log=print):
        self.recipe = recipe
        self.log = log

    def validate(self) -> None:
        raise NotImplementedError

    def states(self) -> list[str]:
        raise NotImplementedError

    def prepare(self, ctx: RunContext) -> None:
        pass

    def cost(self, name: str) -> float:
        """Relative expected run time of a state: parallel states start longest first (less idle tail)."""
        return 1.0

    def run_state(self, name: str, ctx: RunContext) -> StateResult:
        """One state. A kind whose states can share their evaluation with idle workers (--workers) takes
        `split=None`: a callable to call once the state's model is ready; it returns n, the number of shares
        (1: evaluate everything here); with n > 1 the state evaluates share 0 and returns its rows with
        record {"_split": n, "_timings": ...}; `eval_shard` computes the other shares and `eval_margins` each
        language's log-prob margins in other workers."""
        raise NotImplementedError

    def eval_shard(self, name: str, shard: tuple[int, int], ctx: RunContext) -> StateResult:
        raise NotImplementedError(f"{self.kind} states do not split their evaluation")

    def margin_langs(self, name: str) -> list[str]:
        """Languages whose margins a split state computes as tasks of their own (`eval_margins`)."""
        return []

    def eval_margins(self, name: str, lang: str, ctx: RunContext) -> list[list]:
        raise NotImplementedError(f"{self.kind} states do not split their margins")

    def assemble(self, results: dict[str, dict], ctx: RunContext) -> dict:
        raise NotImplementedError

    def write_report(self, out_dir: Path, metrics: dict) -> None:
        pass


# ------------------------------------------------------------------------------------- shared steps
def evaluate_state(model, tok, ev: EvalConfig, records, name: str, log, *, margin: bool | None = None,
                   cache: bool = False, shard: tuple[int, int] | None = None) -> StateResult:
    """Generate -> judge -> aggregate for one model state (the one evaluation path of every kind).

    cache: look the evaluation up by content (weights, records, detector version, generation settings)
    before computing it — for starting models, which every run and sweep cell evaluates the same way.
    shard (k, n): only that share of the prompts, rows without a record (`merged_state` joins the shares)."""
    from lab.evaluate import evaluate_model

    res = evaluate_model(model, tok, records, state=name, langs=ev.langs, max_new_tokens=ev.max_new_tokens,
                         batch_size=ev.batch_size, detector=ev.detectors[0], margin=ev.margin if margin is None else margin,
                         log=log, system=ev.system, do_sample=ev.do_sample, temperature=ev.temperature,
                         top_p=ev.top_p, seed=ev.sample_seed, repetition_stop=ev.repetition_stop,
                         cache=True if (cache and ev.cache and shard is None) else None, shard=shard)
    return StateResult({}, res.generations) if shard is not None else _state_result(res, ev)


def merged_state(ev: EvalConfig, name: str, parts: list[list[dict]], log, margins: list | None = None) -> StateResult:
    """One state's result from the rows of its evaluation shards (k = 0..n-1) and its margins
    (lab.evaluate.state_margins), as one process computes it."""
    from lab.evaluate import merge_shards

    return _state_result(merge_shards(name, parts, log, margins), ev)


def _state_result(res, ev: EvalConfig) -> StateResult:
    record = {"metrics": res.metrics, "loophole": res.loophole}
    if len(ev.detectors) > 1:
        record["judges"] = judge_side_by_side(res.generations, ev.detectors)
    return StateResult(record, res.generations)


def judge_side_by_side(rows: list[dict], methods: list[str]) -> dict:
    """Refusal rates of one state's answers under several detectors, with Cohen's kappa, the confusion
    matrix (rows: the first detector) and the disagreeing answers vs the first."""
    from lab.detect import detect_batch
    from lab.detect.compare import agreement
    from lab.metrics import refusal_metrics

    first = [bool(r["refusal"]) for r in rows]
    out = {}
    for m in methods[1:]:
        v = detect_batch([r["response"] for r in rows], [r["prompt"] for r in rows], [r["lang"] for r in rows], method=m)
        judged = [dict(r, refusal=x.refusal) for r, x in zip(rows, v)]
        ag = agreement(first, [x.refusal for x in v])
        out[m] = {"metrics": refusal_metrics(judged), "kappa_vs_" + methods[0]: ag["kappa"],
                  "confusion": ag["confusion"], "disagreements": len(ag["disagree"]),
                  "disagreeing": [{"id": rows[i]["id"], "lang": rows[i]["lang"], methods[0]: first[i], m: not first[i],
                                   "prompt": rows[i]["prompt"], "response": rows[i]["response"]} for i in ag["disagree"]]}
    return out


# ------------------------------------------------------------------------------------- the contract
def default_out(recipe: RecipeBase) -> Path:
    return Path("runs") / f"{recipe.name}-{recipe.config_hash()}"


def _check_out_dir(out: Path, recipe: RecipeBase, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise LabError(f"--out {out}: exists and is not a directory")
    saved = out / "states" / "config.json"
    if not saved.is_file():
        if out.is_dir() and any(out.iterdir()) and not force and not (out / "states").is_dir():
            raise LabError(f"--out {out}: directory exists, is not empty and holds no lab run "
                           "(choose another directory or pass --force)")
        return
    old = json.loads(saved.read_text(encoding="utf-8"))
    new = recipe.model_dump(mode="json")
    diff = config_diff(old, new)
    if diff and not force:
        raise LabError(f"--out {out} holds a run of a different config (keys differ: {', '.join(diff[:12])}"
                       f"{' ...' if len(diff) > 12 else ''}); its results are kept. Use another --out, "
                       "or --force to discard them.")
    if diff and force:
        import shutil

        shutil.rmtree(out)


def run(recipe: RecipeBase, out_dir: Path | None = None, *, tracking: str | None = None, force: bool = False,
        workers: int = 1, log=print) -> dict:
    """Run any recipe kind under the shared contract; returns the metrics (also in out_dir/metrics.json).

    Under `accelerate launch -m lab run ...` (several processes) every rank runs every state (fine-tunes
    train with DDP, evaluations are sharded; lab.distributed) and only rank 0 writes, logs and tracks."""
    from lab import distributed
    from lab.experiments import experiment_for
    from lab.models import set_threads

    set_threads()
    main = distributed.is_main()
    if distributed.is_distributed():
        if workers > 1:
            raise LabError("--workers cannot be combined with a multi-process launch (accelerate launch / torchrun): "
                           "the processes already share the work")
        distributed.init()
        log = log if main else (lambda *a, **k: None)
    elif workers > 1:  # the workers' server imports torch & co. while this process validates
        from lab.experiments.parallel import start_server

        start_server()
    exp = experiment_for(recipe, log)
    # nothing is written before this passes. Multi-process: rank 0 first, so that caches it fills (a GGUF
    # converted to safetensors: under a process group only rank 0's save_pretrained writes) exist for the rest
    _every_rank_main_first(exp.validate)
    out = Path(out_dir) if out_dir else default_out(recipe)
    _on_main_first(lambda: _check_out_dir(out, recipe, force))
    if (out / "metrics.json").is_file():
        log(f"[lab] {out} is complete (metrics.json exists, same config); nothing to do")
        return json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    ctx = RunContext(out, log, workers, worker=not main)
    if main:
        ctx.states_dir.mkdir(parents=True, exist_ok=True)
        if not (ctx.states_dir / "config.json").is_file():
            write_json(ctx.states_dir / "config.json", recipe.model_dump(mode="json"))
    distributed.barrier()
    tracker = _start_tracking(recipe, out, tracking) if main else None
    t0 = time.time()
    log(f"[lab] {recipe.kind} '{recipe.name}' -> {out}"
        + (f" ({distributed.world_size()} processes)" if distributed.is_distributed() else ""))
    names = exp.states()
    todo = [n for n in names if not ctx.done(n)]
    for n in names:
        if n not in todo:
            log(f"  [{n}] done earlier; skipped")
    serial = [n for n in todo if n in exp.serial_states or workers <= 1]
    rest = [n for n in todo if n not in serial]
    pool = None
    if rest:  # started first: the workers import and validate while prepare (the canary) runs here
        from lab.experiments.parallel import WorkerPool

        pool = WorkerPool(exp, recipe, ctx, workers)
    try:
        if todo:
            _every_rank_main_first(lambda: exp.prepare(ctx))      # rank 0 caches shared artifacts first
        for n in serial:
            run_one_state(exp, n, ctx)
            distributed.barrier()
        if pool is not None:
            pool.run(rest)
    finally:
        if pool is not None:
            pool.close()
    if not main:
        distributed.barrier()                                 # rank 0 assembles and writes
        return json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    results = {n: ctx.load(n) for n in names}
    diverged = {n: r["diverged"] for n, r in results.items() if "diverged" in r}
    metrics = exp.assemble({n: r["record"] for n, r in results.items() if "record" in r}, ctx)
    metrics = {"kind": recipe.kind, "recipe": recipe.name, "model": recipe.model, "config_hash": recipe.config_hash(),
               **metrics, "diverged": diverged,
               "timings": {**{k: v for n, r in results.items() for k, v in r.get("timings", {}).items()},
                           "wall_seconds": round(time.time() - t0, 2)}}
    gens = []
    for n in names:
        p = ctx.states_dir / f"{n}.generations.jsonl"
        if p.is_file():
            gens += read_jsonl(p)
    write_jsonl(out / "generations.jsonl", gens)
    exp.write_report(out, metrics)
    atomic_write_text(out / "config.yaml", dump_recipe(recipe))
    write_json(out / "metrics.json", metrics)                # last: marks the run finished
    for n, msg in diverged.items():
        log(f"[lab] WARNING {n}: {msg}")
    _finish_tracking(tracker, out, metrics)
    log(f"[lab] done in {time.time() - t0:.1f} s: {out / 'report.md'}")
    distributed.barrier()
    return metrics


def _every_rank_main_first(fn) -> None:
    """fn on rank 0 first (its LabError stops every rank), then on the other ranks."""
    from lab import distributed

    _on_main_first(fn)
    if not distributed.is_main():
        fn()


def _on_main_first(fn) -> None:
    """Run fn on rank 0 (the only rank in a one-process run); a LabError there stops every rank."""
    from lab import distributed

    msg = None
    if distributed.is_main():
        if not distributed.is_distributed():
            fn()
            return
        try:
            fn()
        except LabError as e:
            msg = str(e)
    msg = distributed.broadcast(msg)
    if msg is not None:
        raise LabError(msg)


def run_one_state(exp: Experiment, name: str, ctx: RunContext, split=None) -> int:
    """Run a state and write it; returns n > 1 where the state split its evaluation (share 0 written, the
    others left to `eval_shard` in other workers; lab.experiments.parallel joins them)."""
    from lab.train import Diverged

    from lab import distributed

    t = time.time()
    try:
        res = exp.run_state(name, ctx, split=split) if split is not None else exp.run_state(name, ctx)
    except Diverged as e:
        ctx.log(f"  [{name}] {e}")
        if not distributed.is_main():
            return 1
        write_json(ctx.states_dir / f"{name}.json", {"diverged": str(e), "timings": {f"state/{name}": round(time.time() - t, 2)}})
        return 1
    if not distributed.is_main():  # every rank holds the whole state; rank 0 writes it
        return 1
    n = res.record.pop("_split", 1)
    if n > 1:
        write_jsonl(shard_path(ctx, name, 0, n), res.generations)
        write_json(ctx.states_dir / f"{name}.split.json", {"started": t, "timings": res.record.pop("_timings", {})})
        return n
    write_state(ctx, name, res, {**res.record.pop("_timings", {}), f"state/{name}": round(time.time() - t, 2)})
    return 1


def shard_path(ctx: RunContext, name: str, k: int, n: int) -> Path:
    return ctx.states_dir / f"{name}.shard-{k}-of-{n}.jsonl"


def write_state(ctx: RunContext, name: str, res: StateResult, timings: dict) -> None:
    write_jsonl(ctx.states_dir / f"{name}.generations.jsonl", res.generations)
    write_json(ctx.states_dir / f"{name}.json", {"record": res.record, "timings": timings})  # last: the state is done


def _start_tracking(recipe: RecipeBase, out_dir: Path, mode: str | None):
    mode = mode or recipe.tracking
    if mode == "none":
        return None
    from lab.tracking import start_tracking

    return start_tracking(out_dir, recipe.model_dump(mode="json"), mode=mode, name=out_dir.name, job_type=recipe.kind)


def _finish_tracking(tracker, out_dir: Path, metrics: dict) -> None:
    if tracker is None:
        return
    tracker.log_metrics({k: v for k, v in metrics.items() if k in ("models", "transfer", "timings", "diverged")})
    tr = metrics.get("transfer")
    if tr:
        tracker.log_table("transfer_matrix", ["state"] + tr["langs"],
                          [[s] + [row.get(l) for l in tr["langs"]] for s, row in tr["rows"].items()])
    for png in sorted(out_dir.glob("*.png")):
        tracker.log_image(png.stem, png)
    if (out_dir / "report.md").is_file():
        tracker.log_artifact(out_dir / "report.md", "report", "report")
    for adapter in (out_dir / "finetunes").glob("*/adapter"):
        tracker.log_artifact(adapter, f"adapter-{adapter.parent.name.replace('@', '-')}", "lora-adapter")
    tracker.finish()
