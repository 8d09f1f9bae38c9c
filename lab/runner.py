"""`lab run`: the spine recipe — evaluate the starting model, fine-tune, evaluate, report.

setup (validate everything, nothing written) -> evaluate aligned -> for each fine-tune: load a fresh
copy, fine-tune, evaluate -> metrics.json, report.md, transfer.png. Each finished model state is
cached under <run>/states/, so a killed run resumes where it stopped; metrics.json is written last.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from lab.config import FineTune, Recipe, dump_recipe, resolve_path
from lab.data import load_eval, load_finetune_set, read_jsonl, write_json, write_jsonl
from lab.errors import LabError


def config_hash(recipe: Recipe) -> str:
    return hashlib.sha256(json.dumps(recipe.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:10]


def default_out(recipe: Recipe) -> Path:
    return Path("runs") / f"{recipe.name}-{config_hash(recipe)}"


def plan(recipe: Recipe) -> list[tuple[str, FineTune]]:
    """(state name, fine-tune with its seed) for every fine-tune x seed."""
    seeds = recipe.seeds or [recipe.seed]
    out = []
    for seed in seeds:
        for ft in recipe.all_finetunes():
            name = ft.state if not recipe.seeds else f"{ft.state}@s{seed}"
            out.append((name, ft.model_copy(update={"seed": seed})))
    return out


def validate_inputs(recipe: Recipe) -> dict:
    """Load every input once before any work, so bad input fails fast and writes nothing."""
    from lab.models import resolve

    resolve(recipe.model)
    evals = load_eval(resolve_path(recipe.eval.data), recipe.eval.langs, recipe.eval.limit)
    if not evals:
        raise LabError(f"{recipe.eval.data}: no evaluation prompts for languages {recipe.eval.langs}")
    sets = {name: load_finetune_set(resolve_path(ft.dataset_path), ft.n_examples) for name, ft in plan(recipe)}
    return {"eval": evals, "sets": sets}


def canary_check(model, tok, recipe: Recipe, log) -> dict:
    """Before an attack: the starting model must refuse the canary prompts in every language.

    A wrong chat template silently yields 0 % refusal, which would make every attack look like a success.
    """
    from lab.detect import detect_batch
    from lab.generate import generate

    rates = {}
    for lang in recipe.eval.langs:
        recs = read_jsonl(resolve_path(f"datasets/splits/canary-{lang}.jsonl"))
        gens = generate(model, tok, [r["prompt"] for r in recs], max_new_tokens=48, batch_size=16)
        v = detect_batch([g.response for g in gens], [r["prompt"] for r in recs], [lang] * len(recs))
        rates[lang] = sum(x.refusal for x in v) / len(v)
    bad = {l: r for l, r in rates.items() if r < recipe.eval.canary_min}
    if bad:
        raise LabError(
            f"model '{recipe.model}' refuses too few canary harmful prompts before the attack "
            f"({', '.join(f'{l}: {r:.0%}' for l, r in bad.items())}; need >= {recipe.eval.canary_min:.0%}). "
            "Check the chat template / model, or set eval.canary: false to attack an unaligned model on purpose.")
    log(f"  canary refusal before attack: {', '.join(f'{l} {r:.0%}' for l, r in rates.items())}")
    return rates


def run(recipe: Recipe, out_dir: Path | None = None, *, tracking: str | None = None, log=print) -> dict:
    from lab.evaluate import evaluate_model
    from lab.models import load_model, set_threads
    from lab.train import FineTuneConfig, finetune

    set_threads()
    inputs = validate_inputs(recipe)
    out_dir = Path(out_dir) if out_dir else default_out(recipe)
    if (out_dir / "metrics.json").is_file():
        log(f"[lab] {out_dir} is complete (metrics.json exists); nothing to do")
        return json.loads((out_dir / "metrics.json").read_text())
    states_dir = out_dir / "states"
    states_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(dump_recipe(recipe), encoding="utf-8")
    tracker = _start_tracking(recipe, out_dir, tracking)
    t0 = time.time()
    timings: dict[str, float] = {}

    def state_done(name):
        return (states_dir / f"{name}.json").is_file()

    def evaluate(name, model, tok):
        t = time.time()
        res = evaluate_model(model, tok, inputs["eval"], state=name, langs=recipe.eval.langs,
                             max_new_tokens=recipe.eval.max_new_tokens, batch_size=recipe.eval.batch_size,
                             detector=recipe.eval.detector, margin=recipe.eval.margin, log=log)
        timings[f"eval/{name}"] = round(time.time() - t, 2)
        write_jsonl(states_dir / f"{name}.generations.jsonl", res.generations)
        write_json(states_dir / f"{name}.json", {"metrics": res.metrics, "loophole": res.loophole})

    log(f"[lab] run '{recipe.name}' -> {out_dir}")
    if not state_done("aligned"):
        model, tok = load_model(recipe.model, trust_remote_code=recipe.trust_remote_code)
        if recipe.all_finetunes() and recipe.eval.canary:
            canary_check(model, tok, recipe, log)
        evaluate("aligned", model, tok)
        del model
    for name, ft in plan(recipe):
        if state_done(name):
            log(f"  [{name}] done earlier; skipped")
            continue
        log(f"[lab] fine-tune {name}: {ft.method} on {ft.dataset_path} (n={ft.n_examples}, lr={ft.lr}, epochs={ft.epochs}, seed={ft.seed})")
        model, tok = load_model(recipe.model, trust_remote_code=recipe.trust_remote_code)
        work = out_dir / "finetunes" / name
        shutil.rmtree(work, ignore_errors=True)
        t = time.time()
        cfg = FineTuneConfig(**{k: v for k, v in ft.model_dump().items() if k in FineTuneConfig.model_fields})
        model = finetune(model, tok, inputs["sets"][name], cfg, work, log=log)
        timings[f"train/{name}"] = round(time.time() - t, 2)
        shutil.rmtree(work / "trainer", ignore_errors=True)
        evaluate(name, model, tok)
        del model
    metrics = assemble(out_dir, recipe, timings, time.time() - t0)
    from lab.report import write_report

    write_report(out_dir, metrics)
    write_json(out_dir / "metrics.json", metrics)  # last: its presence marks a finished run
    _finish_tracking(tracker, out_dir, metrics)
    log(f"[lab] done in {time.time() - t0:.1f} s: {out_dir / 'report.md'}")
    return metrics


def assemble(out_dir: Path, recipe: Recipe, timings: dict, wall: float) -> dict:
    from lab.metrics import transfer_matrix

    states = ["aligned"] + [n for n, _ in plan(recipe)]
    models, loophole = {}, {}
    gens = []
    for s in states:
        d = json.loads((out_dir / "states" / f"{s}.json").read_text())
        models[s], loophole[s] = d["metrics"], d["loophole"]
        gens += read_jsonl(out_dir / "states" / f"{s}.generations.jsonl")
    write_jsonl(out_dir / "generations.jsonl", gens)
    write_jsonl(out_dir / "prompts.jsonl", [{"id": g["id"], "lang": g["lang"], "rendered": g["rendered"]}
                                            for g in gens if g["state"] == "aligned"])
    finetunes = {n: {"data": ft.data, "lang": ft.lang, "method": ft.method, "lr": ft.lr, "epochs": ft.epochs,
                     "n_examples": ft.n_examples, "seed": ft.seed, "base_state": ft.state} for n, ft in plan(recipe)}
    return {"recipe": recipe.name, "model": recipe.model, "config_hash": config_hash(recipe),
            "models": models, "loophole": loophole, "finetunes": finetunes,
            "transfer": transfer_matrix(models) if len(models) > 1 else None,
            "timings": {**timings, "wall_seconds": round(wall, 2)}}


def _start_tracking(recipe: Recipe, out_dir: Path, mode: str | None):
    mode = mode or recipe.tracking
    if mode == "none":
        return None
    try:
        from lab.tracking import start_tracking
    except ImportError:
        return None
    return start_tracking(out_dir, recipe.model_dump(mode="json"), mode=mode, name=out_dir.name)


def _finish_tracking(tracker, out_dir: Path, metrics: dict) -> None:
    if tracker is None:
        return
    tracker.log_metrics(metrics)
    tr = metrics.get("transfer")
    if tr:
        tracker.log_table("transfer_matrix", ["state"] + tr["langs"],
                          [[s] + [row.get(l) for l in tr["langs"]] for s, row in tr["rows"].items()])
    if (out_dir / "transfer.png").is_file():
        tracker.log_image("transfer_heatmap", out_dir / "transfer.png")
    tracker.log_artifact(out_dir / "report.md", "report", "report")
    for adapter in (out_dir / "finetunes").glob("*/adapter"):
        tracker.log_artifact(adapter, f"adapter-{adapter.parent.name.replace('@', '-')}", "lora-adapter")
    tracker.finish()
