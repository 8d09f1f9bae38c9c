"""`--workers N`: a run's independent states in N worker processes, one torch thread each (results
identical to one worker, tests/test_spine.py). The workers are forked from a forkserver that has imported
torch, transformers, peft, TRL and the lab and compiled the detector once (`lab.experiments.preload`;
spawned processes where there is no forkserver). A worker validates and prepares a recipe once per
process; the states start longest first (Experiment.cost).

A state whose kind can split its evaluation (kind: transfer, LoRA fine-tunes) asks, once its model is
trained, whether a fine-tune still waits for a worker. If none does, the other workers would soon idle through
its evaluation: the state evaluates share 0 of N = 2 x workers itself and shares 1..N-1 go to the pool as tasks
(each loads the starting model + the saved adapter, kept for the worker's next task of that state), and so do
the state's log-prob margins, one task per language (the per-language call one process makes: the same floats);
the main process joins the shares and the margins into the state (`base.merged_state`: the rows of one process —
greedy rows do not depend on their batch).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from lab.experiments import base

_WORKER_EXPERIMENTS: dict[str, tuple] = {}  # per worker process: the validated experiment of a recipe
SHARES_PER_WORKER = 2  # a split state's evaluation in 2 x workers shares (finer shares balance the tail)
_POOL: dict = {}  # per worker process: the pool's shared count of waiting costly states and its split-request queue


def _init_worker(waiting, requests, barrier) -> None:
    _POOL.update(waiting=waiting, requests=requests, barrier=barrier)


def _started(counted: bool) -> None:
    """A task counted as waiting leaves the pool's queue (a worker took it)."""
    w = _POOL.get("waiting")
    if w is not None and counted:
        with w.get_lock():
            w.value -= 1


def _experiment(kind: str, recipe_json: dict, out: str, prepare: bool = True):
    from lab.experiments import KINDS
    from lab.models import set_threads

    set_threads()
    key = json.dumps([kind, recipe_json, out], sort_keys=True)
    if key not in _WORKER_EXPERIMENTS:  # validate once per process, not once per state
        cls = KINDS[kind]
        exp = cls(cls.Recipe.model_validate(recipe_json), log=lambda *a, **k: None)
        exp.validate()
        _WORKER_EXPERIMENTS.clear()
        _WORKER_EXPERIMENTS[key] = [exp, base.RunContext(Path(out), exp.log, 1, worker=True), False]
    entry = _WORKER_EXPERIMENTS[key]
    if prepare and not entry[2]:  # after the main process's prepare (its shared artifacts exist by then)
        entry[0].prepare(entry[1])
        entry[2] = True
    return entry[0], entry[1]


def warm_up(kind: str, recipe_json: dict, out: str) -> None:
    """Imports and validation while the main process runs its one-off checks (the canary); the barrier
    makes every worker take one warm-up task."""
    _experiment(kind, recipe_json, out, prepare=False)
    _POOL["barrier"].wait(timeout=300)


def worker(kind: str, recipe_json: dict, out: str, name: str, workers: int = 1, counted: bool = False) -> tuple[str, int]:
    _started(counted)
    exp, ctx = _experiment(kind, recipe_json, out)

    def split() -> int:
        if _POOL["waiting"].value > 0:  # a fine-tune still waits: it keeps the other workers busy
            return 1
        for part in ("shard", "margins"):  # shares and margins left by a killed run
            for p in ctx.states_dir.glob(f"{name}.{part}-*"):
                p.unlink()
        n = SHARES_PER_WORKER * workers
        _POOL["requests"].put((name, n, exp.margin_langs(name)))
        return n

    can_split = type(exp).eval_shard is not base.Experiment.eval_shard  # kinds that implement shares
    return name, base.run_one_state(exp, name, ctx, split=split if workers > 1 and _POOL and can_split else None)


def shard_worker(kind: str, recipe_json: dict, out: str, name: str, k: int, n: int) -> tuple[str, int, float]:
    exp, ctx = _experiment(kind, recipe_json, out)
    t = time.time()
    res = exp.eval_shard(name, (k, n), ctx)
    base.write_jsonl(base.shard_path(ctx, name, k, n), res.generations)
    return name, k, round(time.time() - t, 2)


def margin_worker(kind: str, recipe_json: dict, out: str, name: str, lang: str) -> tuple[str, str, float]:
    exp, ctx = _experiment(kind, recipe_json, out)
    t = time.time()
    base.write_json(_margins_path(ctx, name, lang), exp.eval_margins(name, lang, ctx))
    return name, f"margins-{lang}", round(time.time() - t, 2)


def _margins_path(ctx, name: str, lang: str) -> Path:
    return ctx.states_dir / f"{name}.margins-{lang}.json"


def _join(exp, name: str, n: int, langs: list[str], shard_s: dict, ctx) -> None:
    """The state from its n evaluation shares and its margins per language (written by the workers), then
    those files are removed."""
    meta_path = ctx.states_dir / f"{name}.split.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    paths = [base.shard_path(ctx, name, k, n) for k in range(n)]
    m_paths = [_margins_path(ctx, name, lang) for lang in langs]
    margins = [m for p in m_paths for m in json.loads(p.read_text(encoding="utf-8"))]
    res = base.merged_state(exp.recipe.eval, name, [base.read_jsonl(p) for p in paths], ctx.log, margins)
    timings = dict(meta["timings"])
    shard_s = {0: timings.get(f"eval/{name}", 0.0), **shard_s}  # share 0: the state's own worker
    timings[f"eval/{name}"] = round(sum(shard_s.values()), 2)  # evaluation seconds summed over the shares
    timings[f"shares/{name}"] = n  # worker processes that shared the evaluation
    timings[f"tasks/{name}"] = {str(k): v for k, v in shard_s.items()}  # seconds of each share and margin task
    timings[f"state/{name}"] = round(time.time() - meta["started"], 2)
    base.write_state(ctx, name, res, timings)
    for p in paths + m_paths + [meta_path]:
        p.unlink(missing_ok=True)


PRELOAD = ["lab.experiments.preload"]  # imported once by the forkserver; every worker is forked from it


def _context():
    """The forkserver (POSIX), its server importing `PRELOAD`; spawn where there is none (Windows) or where
    LAB_WORKER_START=spawn (the previous start, for comparisons). Both start a worker from a clean single-threaded
    process: none of the main process's locks (W&B's threads) is inherited, as with a plain fork."""
    import multiprocessing as mp
    import os

    how = os.environ.get("LAB_WORKER_START", "forkserver")
    if how not in ("forkserver", "spawn"):
        from lab.errors import LabError

        raise LabError(f"LAB_WORKER_START={how!r}: expected 'forkserver' or 'spawn'")
    if how == "spawn" or "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def start_server() -> None:
    """Start the forkserver now (it imports `PRELOAD` in the background) so that its imports overlap the main
    process's validation; without this the pool's first worker would start it and wait for the imports."""
    if _context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


class WorkerPool:
    """`workers` processes for a run's independent states (one torch thread each); same results as one process.
    Started before the main process's `prepare` by a thread of its own (a worker's start waits for the forkserver's
    imports), so that the workers start and validate while the canary runs; `run` starts the longest states first
    (Experiment.cost), so no worker idles through a long last state, and a state trained while no fine-tune
    waits shares its evaluation with the other workers."""

    def __init__(self, exp, recipe, ctx, workers: int):
        import threading

        self.exp, self.ctx, self.workers = exp, ctx, workers
        self.args = (recipe.kind, recipe.model_dump(mode="json"), str(ctx.out_dir))
        self.pool, self._error = None, None
        self._starting = threading.Thread(target=self._start, name="lab-worker-pool", daemon=True)
        self._starting.start()

    def _start(self) -> None:
        from concurrent.futures import ProcessPoolExecutor

        try:
            mp = _context()
            self.waiting, self.requests = mp.Value("i", 0), mp.Queue()
            self.pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=mp, initializer=_init_worker,
                                            initargs=(self.waiting, self.requests, mp.Barrier(self.workers)))
            self.warm = [self.pool.submit(warm_up, *self.args) for _ in range(self.workers)]
        except BaseException as e:  # raised in the main thread by run()
            self._error = e

    def close(self) -> None:
        self._starting.join()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, fn, *a, counted: bool = False):
        if counted:
            with self.waiting.get_lock():
                self.waiting.value += 1
        return self.pool.submit(fn, *self.args, *a, **({"counted": True} if counted else {}))

    def run(self, names: list[str]) -> None:
        import queue as queue_mod
        from concurrent.futures import FIRST_COMPLETED, wait

        exp, ctx, workers = self.exp, self.ctx, self.workers
        self._starting.join()
        if self._error is not None:
            raise self._error
        for f in self.warm:
            f.result()
        names = sorted(names, key=lambda n: -exp.cost(n))  # stable: equal costs keep the plan's order
        # waiting = costly states (fine-tunes) not yet started; the starting model's (often cached) evaluation
        # and evaluation shares do not count: a trained state splits when no fine-tune waits
        futs = {self._submit(worker, n, workers, counted=exp.cost(n) > 0): n for n in names}
        # state -> {"n": n, "langs": margin tasks, "left": shares and margins not yet written, "s": seconds per task}
        shards: dict[str, dict] = {}

        def take_requests(block_for: str | None = None) -> None:
            while True:
                try:
                    if block_for and block_for not in shards:
                        name, n, langs = self.requests.get(timeout=30)
                    else:
                        name, n, langs = self.requests.get_nowait()
                except queue_mod.Empty:
                    return
                shards[name] = {"n": n, "langs": langs, "left": set(range(n)) | {f"margins-{l}" for l in langs}, "s": {}}
                for k in range(1, n):  # the long shares first, then the margins (~1 s each on the organism)
                    futs[self._submit(shard_worker, name, k, n)] = name
                for lang in langs:
                    futs[self._submit(margin_worker, name, lang)] = name

        while futs:
            done, _ = wait(futs, timeout=0.2, return_when=FIRST_COMPLETED)
            take_requests()
            for f in done:
                del futs[f]
                res = f.result()
                if len(res) == 3:  # a share of a split state
                    name, k, secs = res
                else:
                    name, n = res
                    if n == 1:
                        ctx.log(f"  [{name}] done (worker)")
                        continue
                    take_requests(block_for=name)
                    if name not in shards:
                        raise RuntimeError(f"{name} split its evaluation but its request never reached the main process")
                    k = 0
                sh = shards[name]
                sh["left"].discard(k)
                if k:
                    sh["s"][k] = secs
                if not sh["left"]:
                    _join(exp, name, sh["n"], sh["langs"], sh["s"], ctx)
                    ctx.log(f"  [{name}] done (its evaluation in {sh['n']} shares)")
