"""The `lab` command: run, eval, detect, attribute, probe, sweep, zoo, data, report."""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import List, Optional

import typer

from lab.errors import LabError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="A lab for cross-lingual fine-tuning attacks, refusal detection and safety localization.")
zoo_app = typer.Typer(no_args_is_help=True, help="Model organisms the lab builds itself.")
data_app = typer.Typer(no_args_is_help=True, help="The lab's datasets.")
app.add_typer(zoo_app, name="zoo")
app.add_typer(data_app, name="data")


def _err(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)


def lab_errors(fn):
    """Bad input -> one clear message and exit code 2 (no traceback); Ctrl-C -> how to resume, exit 130."""
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            rc = fn(*a, **kw)
        except LabError as e:
            _err(str(e))
            raise typer.Exit(2)
        except KeyboardInterrupt:
            _err(INTERRUPTED)
            raise typer.Exit(130)
        if isinstance(rc, int) and rc:
            raise typer.Exit(rc)
    return wrapper


def _log(quiet: bool):
    return (lambda *a, **k: None) if quiet else print


@app.command()
@lab_errors
def run(recipe: Path = typer.Argument(..., help="recipe YAML (its `kind:` says which experiment)"),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default runs/<name>-<config hash>)"),
        set_: List[str] = typer.Option([], "--set", help="override a recipe field: key=value (dotted path, list indices too)"),
        force: bool = typer.Option(False, "--force", help="discard results in --out that belong to another config"),
        workers: str = typer.Option("auto", "--workers", "-w",
                                    help="processes for independent model states, one torch thread each: N, or auto "
                                         "(without a GPU: the CPU's cores, at most 4, fewer where the model would not "
                                         "fit in memory that many times; with one: 1; env LAB_WORKERS)"),
        no_wandb: bool = typer.Option(False, "--no-wandb", help="no W&B tracking for this run"),
        quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Run a recipe of any kind (transfer, localization, censorship, defense) under one run contract."""
    from lab.config import parse_override
    from lab.experiments import load_recipe, run as run_recipe
    from lab.tracking import sweep_overrides_from_env

    overrides = {**sweep_overrides_from_env(), **dict(parse_override(s) for s in set_)}
    r = load_recipe(recipe, overrides)
    from lab import distributed

    n = 1 if distributed.is_distributed() and workers == "auto" else eval_workers(workers, model=r.model)
    run_recipe(r, out, tracking="none" if no_wandb else None, force=force, workers=n, log=_log(quiet))


@app.command("eval")
@lab_errors
def eval_(model: str = typer.Option("zoo:organism", "--model", "-m", help="hub id, local path, *.gguf or zoo:<name>"),
          langs: str = typer.Option("zh,ja,en,it,hi", "--langs", help="comma-separated: zh,ja,en,it,hi"),
          data: str = typer.Option("datasets/splits/eval.jsonl", "--data", help="evaluation prompts"),
          limit: Optional[int] = typer.Option(None, "--limit", help="parallel prompts per kind"),
          detector: str = typer.Option("tiered", "--detector", help="a method, or several comma-separated"),
          out: Optional[Path] = typer.Option(None, "--out", "-o"),
          force: bool = typer.Option(False, "--force"),
          trust_remote_code: bool = typer.Option(False, "--trust-remote-code"),
          no_wandb: bool = typer.Option(False, "--no-wandb"),
          workers: str = typer.Option("auto", "--workers", "-w",
                                      help="processes sharing the prompts, one torch thread each: N, or auto "
                                           "(without a GPU: the CPU's cores, at most 4; with one: 1; env LAB_WORKERS)"),
          quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Evaluate one model on held-out harmful and benign prompts (no fine-tuning); the state is named after the model."""
    from lab import distributed
    from lab.experiments import recipe_from_dict, run as run_recipe

    dets = [d.strip() for d in detector.split(",") if d.strip()]
    raw = {"kind": "transfer", "name": "eval", "model": model, "trust_remote_code": trust_remote_code,
           "baseline": model_state_name(model),
           "eval": {"data": data, "langs": [l.strip() for l in langs.split(",") if l.strip()], "limit": limit,
                    "detector": dets[0] if len(dets) == 1 else dets}}
    r = recipe_from_dict(raw, "lab eval")
    n = eval_workers(workers, model=model)
    if n > 1 and not distributed.is_distributed():  # the same command in n gloo processes
        from lab.experiments import experiment_for

        experiment_for(r, _log(True)).validate()  # bad input: one clear error before any process starts
        args = ["eval", "--model", model, "--langs", langs, "--data", data, "--detector", detector, "--workers", "1"]
        args += (["--limit", str(limit)] if limit is not None else []) + (["--out", str(out)] if out else [])
        args += [f for f, on in (("--force", force), ("--trust-remote-code", trust_remote_code),
                                 ("--no-wandb", no_wandb), ("--quiet", quiet)) if on]
        return distributed.launch(n, args)
    run_recipe(r, out, tracking="none" if no_wandb else None, force=force, log=_log(quiet))


def eval_workers(spec: str, model: str | None = None) -> int:
    """--workers of `lab eval` / `lab run`: a number, or auto (LAB_WORKERS if set; a GPU: 1; no GPU: min(cores, 4),
    and no more copies of the model than fit in a third of the machine's memory)."""
    import os

    spec = os.environ.get("LAB_WORKERS", "auto") if spec == "auto" else spec
    if spec == "auto":
        import torch

        if torch.cuda.is_available():
            return 1
        n = max(1, min(os.cpu_count() or 1, 4))
        if model:
            size = _model_bytes(model)
            if size is None:  # a model not on disk yet: one process
                return 1
            # fp32 weights + a merged fine-tune + activations: ~3x the stored weights per worker
            mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            n = max(1, min(n, int(mem / 3 // (3 * size))))
        return n
    if not spec.isdigit() or not 1 <= int(spec) <= 8:
        raise LabError(f"--workers: expected a number from 1 to 8 or 'auto', got {spec!r}")
    return int(spec)


def _model_bytes(spec: str) -> int | None:
    """Bytes of a local model's weight files (a hub id not yet downloaded: None, i.e. unknown)."""
    from pathlib import Path as P

    from lab.models import resolve

    try:
        if spec.lower().endswith(".gguf"):
            p = P(spec).expanduser()
        elif spec.startswith("zoo:") or P(spec).expanduser().exists():
            p = P(resolve(spec))
        else:  # a hub id: only a snapshot already in the local cache (no download to count workers)
            from huggingface_hub import snapshot_download

            p = P(snapshot_download(spec, local_files_only=True))
    except Exception:
        return None
    if p.is_file():
        return p.stat().st_size * 4  # a quantized GGUF is dequantized to fp32
    files = list(p.glob("*.safetensors")) + list(p.glob("*.bin")) if p.is_dir() else []
    return sum(f.stat().st_size for f in files) or None


def model_state_name(spec: str) -> str:
    """A state name for a model spec: zoo:organism -> organism, Qwen/Qwen2.5-7B-Instruct -> Qwen2.5-7B-Instruct."""
    import re

    name = re.sub(r"[^A-Za-z0-9._+-]", "-", spec.rstrip("/").split(":")[-1].split("/")[-1]).strip("-.") or "model"
    return name[:100]


@app.command()
@lab_errors
def detect(input: Optional[Path] = typer.Argument(None, help="JSONL with a 'response' field per line"),
           output: Optional[Path] = typer.Option(None, "--output", "-o"),
           method: str = typer.Option("tiered", "--method",
                                      help="tiered | tiered-rules | dictionary-000 | gcg | substring | keywords | "
                                           "judge:<hub id or path> (judge:<classifier|wildguard|qwen3guard>=<model>)"),
           compare: Optional[str] = typer.Option(None, "--compare", help="comma-separated methods: kappa + disagreements"),
           disagreements: Optional[Path] = typer.Option(None, "--disagreements"),
           text: Optional[str] = typer.Option(None, "--text", help="judge one response given on the command line"),
           prompt: Optional[str] = typer.Option(None, "--prompt", help="the prompt of --text (optional)")):
    """Judge responses with the shared refusal detector."""
    import json

    from lab.detect.io import compare_file, detect_file

    if text is not None:
        from lab.detect import detect as _detect

        print(json.dumps(_detect(text, prompt, method=method).to_dict(), indent=1, ensure_ascii=False))
        return 0
    if input is None:
        raise LabError("lab detect: give an INPUT.jsonl or --text")
    if compare:
        methods = [m.strip() for m in compare.split(",") if m.strip()]
        dis = disagreements or (output or input.with_suffix("")).with_name(input.stem + ".disagreements.jsonl")
        res = compare_file(input, methods, dis)
        print(json.dumps(res, indent=1, ensure_ascii=False))
        return 0
    if output is None:
        raise LabError("lab detect: give -o OUTPUT.jsonl")
    res = detect_file(input, output, method=method)
    print(json.dumps(res, indent=1, ensure_ascii=False))


@app.command()
@lab_errors
def report(run_dir: Path = typer.Argument(..., help="a finished run directory")):
    """Re-render report.md and transfer.png from a run's metrics.json."""
    from lab.report import report_from_dir

    if not (run_dir / "metrics.json").is_file():
        raise LabError(f"{run_dir}: no metrics.json (not a finished run)")
    print(report_from_dir(run_dir))


@app.command()
@lab_errors
def attribute(model: str = typer.Option("zoo:organism", "--model", "-m"),
              method: str = typer.Option("snip", "--method", help="snip | snip-pooled | wanda | random | actsvd"),
              data: str = typer.Option("safety", "--data", help="safety | utility"),
              langs: str = typer.Option("all", "--langs", help="comma-separated languages, or 'all' (together)"),
              out: Path = typer.Option(Path("runs/attribution"), "--out", "-o"),
              q: float = typer.Option(5.0, "--q", help="top-q %% by safety score"),
              p: Optional[float] = typer.Option(None, "--p", help="minus top-p %% by utility score (set difference)"),
              scope: str = typer.Option("per-matrix", "--scope", help="per-matrix | per-row | global"),
              n_examples: int = typer.Option(64, "--n-examples"),
              dry_run: bool = typer.Option(False, "--dry-run", help="print the estimated peak memory and stop"),
              save_scores: bool = typer.Option(False, "--save-scores"),
              score_dtype: str = typer.Option("float32", "--score-dtype", help="float32 | bfloat16"),
              layers_per_pass: Optional[int] = typer.Option(None, "--layers-per-pass", help="score N decoder layers per pass (large models)"),
              trust_remote_code: bool = typer.Option(False, "--trust-remote-code")):
    """Score weights by importance for safety vs utility (SNIP, Wanda, random) and save masks; ActSVD subspaces."""
    from lab.attribution.cli_entry import attribute_main

    return attribute_main(model, method, data, [l.strip() for l in langs.split(",")], out, q, p, scope, n_examples,
                          dry_run, save_scores, layers_per_pass=layers_per_pass, score_dtype=score_dtype,
                          trust_remote_code=trust_remote_code)


@app.command()
@lab_errors
def probe(model: List[str] = typer.Option([], "--model", "-m", help="model(s) to probe; repeatable"),
          quick: bool = typer.Option(False, "--quick", help="seed 001's 22 questions (default)"),
          full: bool = typer.Option(False, "--full", help="all questions"),
          samples: int = typer.Option(3, "--samples"),
          temperature: float = typer.Option(0.7, "--temperature"),
          system: Optional[str] = typer.Option(None, "--system", help='e.g. "用中文回答如下问题"'),
          lang: List[str] = typer.Option([], "--lang", help="zh | ja | en (repeatable; default zh)"),
          out: Optional[Path] = typer.Option(None, "--out", "-o"),
          no_wandb: bool = typer.Option(False, "--no-wandb")):
    """Censorship probe: refusal, deflection and official-line answers to politically sensitive questions."""
    from lab.probe import probe_main

    return probe_main(list(model), quick=quick or not full, full=full, samples=samples, temperature=temperature,
                      system=system, langs=list(lang) or None, out=out, tracking="none" if no_wandb else "auto")


@app.command()
@lab_errors
def sweep(file: Path = typer.Argument(..., help="sweep YAML (W&B sweep format)"),
          out: Optional[Path] = typer.Option(None, "--out", "-o",
                                             help="write here: DIR/summary.json, DIR/cells/<cell>/ "
                                                  "(default runs/sweep-<name>-<hash>)"),
          workers: int = typer.Option(1, "--workers", "-w"),
          wandb_: bool = typer.Option(False, "--wandb", help="create a real W&B sweep and run agents"),
          agent: Optional[str] = typer.Option(None, "--agent", metavar="SWEEP_ID",
                                              help="join an existing W&B sweep as an agent"),
          seed: Optional[int] = typer.Option(None, "--seed", help="another draw for method: random"),
          quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Run (or resume) a sweep: one run directory per cell, file locks, aggregate summary."""
    from lab.sweep import sweep_main

    if agent and wandb_:
        raise LabError("lab sweep: --agent joins an existing W&B sweep, --wandb creates one; give one of them")
    return sweep_main(file, out, workers, wandb_, quiet, seed=seed, agent=agent)


@zoo_app.command("build")
@lab_errors
def zoo_build(name: str = typer.Argument("organism", help="organism | organism-censored"),
              seed: int = typer.Option(0, "--seed"),
              bridge_share: Optional[float] = typer.Option(None, "--bridge-share",
                  help="translation + code-switched examples per request example (cross-script transfer dial)"),
              out: Optional[Path] = typer.Option(None, "--out", help="checkpoint root (default: the lab's zoo)"),
              set_: List[str] = typer.Option([], "--set", help="override an OrganismConfig field: key=value"),
              quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Train the model organism (organism-base + organism) deterministically from the lab's datasets."""
    from lab.models import ZOO_DIR
    import yaml
    from pydantic import ValidationError

    from lab.zoo.organism import OrganismConfig, build

    if name not in ("organism", "organism-censored"):
        raise LabError(f"lab zoo build: unknown organism '{name}' (expected organism or organism-censored)")
    kw = {"seed": seed, "censorship": name == "organism-censored"}
    if bridge_share is not None:
        kw["bridge_share"] = bridge_share
    for item in set_:
        key, sep, value = item.partition("=")
        if not sep or key not in OrganismConfig.model_fields:
            raise LabError(f"lab zoo build --set {item!r}: expected key=value with key one of "
                           f"{', '.join(OrganismConfig.model_fields)}")
        kw[key] = yaml.safe_load(value)
    try:
        cfg = OrganismConfig(**kw)
    except ValidationError as e:
        raise LabError(f"lab zoo build --set: {e.errors()[0]['loc'][0]}: {e.errors()[0]['msg']}") from None
    build(name, cfg, out or ZOO_DIR, log=_log(quiet))


@zoo_app.command("list")
def zoo_list():
    """List the zoo's checkpoints."""
    import json

    from lab.models import ZOO_DIR

    for p in sorted(ZOO_DIR.glob("*/build.json")):
        b = json.loads(p.read_text())
        print(f"zoo:{p.parent.name}\t{b['n_params'] / 1e6:.2f} M params\tstage {b['stage']}\tdata {b['data_sha256'][:12]}")


@data_app.command("build")
@lab_errors
def data_build(seed: int = typer.Option(0, "--seed")):
    """Rebuild datasets/splits/*.jsonl from the hand-written sources (deterministic)."""
    from lab.data import write_splits

    for k, v in write_splits(seed=seed).items():
        print(f"{k}\t{v}")


INTERRUPTED = "interrupted — rerun the same command to resume (finished model states are kept)"


def main() -> None:  # `lab` and `python -m lab`
    """The entry point: a Ctrl-C that lands outside a command (imports, option parsing, interpreter
    start-up of a command) gets the same one line and exit code 130 as one inside it."""
    try:
        app()
    except KeyboardInterrupt:
        _err(INTERRUPTED)
        _exit_interrupted()
    except SystemExit as e:
        if e.code == 130:  # a command was interrupted (lab_errors printed how to resume)
            _exit_interrupted()
        raise


def _exit_interrupted() -> None:
    """Exit 130 without interpreter finalization: 1 in 6 interrupted runs exited by signal (-2) after the
    message was printed (a second KeyboardInterrupt during shutdown); the run dir's writes are atomic."""
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


if __name__ == "__main__":
    main()
