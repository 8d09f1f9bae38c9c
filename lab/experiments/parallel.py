"""`--workers N`: a run's independent states in N spawned processes, one torch thread each (results
identical to one worker, tests/test_spine.py). A worker validates and prepares a recipe once per
process; the states start longest first (Experiment.cost)."""
from __future__ import annotations

import json
from pathlib import Path

from lab.experiments import base

_WORKER_EXPERIMENTS: dict[str, tuple] = {}  # per worker process: the validated experiment of a recipe


def worker(kind: str, recipe_json: dict, out: str, name: str) -> str:
    from lab.experiments import KINDS
    from lab.models import set_threads

    set_threads()
    key = json.dumps([kind, recipe_json, out], sort_keys=True)
    if key not in _WORKER_EXPERIMENTS:  # validate and prepare once per process, not once per state
        cls = KINDS[kind]
        exp = cls(cls.Recipe.model_validate(recipe_json), log=lambda *a, **k: None)
        exp.validate()
        ctx = base.RunContext(Path(out), exp.log, 1, worker=True)
        exp.prepare(ctx)
        _WORKER_EXPERIMENTS.clear()
        _WORKER_EXPERIMENTS[key] = (exp, ctx)
    exp, ctx = _WORKER_EXPERIMENTS[key]
    base.run_one_state(exp, name, ctx)
    return name


def run_parallel(exp, recipe, names: list[str], ctx, workers: int) -> None:
    """Independent states in `workers` spawned processes (one torch thread each); same results as one.
    The longest states start first (Experiment.cost), so no worker idles through a long last state."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    names = sorted(names, key=lambda n: -exp.cost(n))  # stable: equal costs keep the plan's order
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        futs = [pool.submit(worker, recipe.kind, recipe.model_dump(mode="json"), str(ctx.out_dir), n) for n in names]
        for f in as_completed(futs):
            ctx.log(f"  [{f.result()}] done (worker)")
