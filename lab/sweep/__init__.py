"""`lab sweep FILE` -- resumable local executor for sweep files in W&B's own sweep format.

A sweep file is a W&B sweep configuration whose parameter names are dotted recipe paths and
whose ``program`` is the recipe; its ``command`` runs ``lab run <recipe>``, which reads the
cell's parameters from ``WANDB_SWEEP_PARAM_PATH`` -- so the same file works with
``wandb sweep FILE`` + ``wandb agent`` and offline with ``lab sweep FILE``::

    name: transfer-seeds
    program: recipes/attack.yaml
    method: grid                # grid | random (random needs run_cap; seeded from the file or sweep_seed)
    parameters:
      attack.lang: {values: [zh, ja]}
      seed: {values: [0, 1, 2]}
    command: ["${env}", "${interpreter}", -m, lab, run, "${program}"]

A parameter value may be a mapping; it sets several fields at once (``attack: {values:
[{data: harmful, lang: zh}, {data: benign, lang: en}]}``).  Nested W&B parameters
(``attack: {parameters: {lang: {values: [...]}}}``) are the same as ``attack.lang``.

``--out DIR`` is where the sweep writes (default ``runs/sweep-<name>-<hash>``, the hash of the
resolved recipe and the sweep's parameters, so an edited sweep or recipe gets a new dir)::

    DIR/summary.json  summary.md  transfer_heatmap.png  cells.json  sweep.yaml  timings.json
    DIR/cells/<params>--<id>/     one finished run per cell (metrics.json + sweep_cell.json)
    DIR/cells/.tmp/  .locks/  .failed/

Modules: :mod:`.spec` (sweep file, grid/random), :mod:`.cells` (cells, store, locks),
:mod:`.executor` (worker threads, one process per cell), :mod:`.summary` (tables, heatmap),
:mod:`.agent` (W&B sweeps and agents).
"""
from __future__ import annotations

import hashlib
import json
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from lab.errors import LabError
from lab.stats import mean_ci
from lab.sweep.cells import CELL_META, Cell, Store, enumerate_cells, resolve_config
from lab.sweep.executor import Executor
from lab.sweep.spec import SweepSpec, canon, load_sweep
from lab.sweep.summary import aggregate

__all__ = ["sweep_main", "load_sweep", "SweepSpec", "Cell", "enumerate_cells", "aggregate", "mean_ci",
           "default_out", "sweep_hash"]


def sweep_hash(spec: SweepSpec) -> str:
    """What the sweep computes: the resolved recipe and the parameters (and the seed for random)."""
    key = {"recipe": resolve_config(spec.recipe, {}), "method": spec.method, "parameters": spec.params,
           "run_cap": spec.run_cap, "seed": spec.seed if spec.method == "random" else None}
    return hashlib.sha256(canon(key).encode()).hexdigest()[:10]


def default_out(spec: SweepSpec) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in spec.name).strip("._") or "sweep"
    return Path("runs") / f"sweep-{safe}-{sweep_hash(spec)}"


def _resume_hint(file: Path, out: Path | None, agent: str | None = None) -> str:
    cmd = ["lab", "sweep", str(file)] + (["--out", str(out)] if out is not None else [])
    cmd += ["--agent", agent] if agent else []
    return f"interrupted; finished cells are kept -- rerun `{shlex.join(cmd)}` to resume."


def sweep_main(file: Path, out: Path | None = None, workers: int = 1, use_wandb: bool = False,
               quiet: bool = False, *, cell_cmd: list[str] | None = None, seed: int | None = None,
               agent: str | None = None) -> int:
    """Run (or resume) a sweep; returns the exit code (0 ok, 1 failed cells, 2 bad input, 130 interrupted)."""
    if workers < 1:
        raise LabError(f"--workers must be >= 1, got {workers}")

    def on_term(signum, frame):  # SIGTERM: stop like Ctrl-C (children die with us anyway)
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is threading.main_thread() else None
    name = Path(file).stem
    try:
        spec = load_sweep(file, seed=seed)
        name = spec.name
        out = Path(out) if out is not None else default_out(spec)
        store = Store(out)
        store.setup()
        if agent:
            from lab.sweep.agent import run_agent

            return run_agent(spec, store, agent, quiet, cell_cmd)
        if use_wandb:
            from lab.sweep.agent import wandb_sweep

            return wandb_sweep(spec, store, workers, quiet, cell_cmd)
        return _local(spec, store, workers, quiet, cell_cmd)
    except KeyboardInterrupt:
        print(f"[sweep {name}] {_resume_hint(file, out, agent)}", file=sys.stderr, flush=True)
        return 130
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _local(spec: SweepSpec, store: Store, workers: int, quiet: bool, cell_cmd: list[str] | None) -> int:
    from lab.data import atomic_write_text
    from lab.progress import SweepProgress

    out = store.out
    cells = enumerate_cells(spec)
    atomic_write_text(out / "cells.json", json.dumps(
        [{"id": c.id, "dir": f"cells/{c.dirname}", "params": c.params} for c in cells], indent=2, default=str,
        ensure_ascii=False))
    atomic_write_text(out / "sweep.yaml", Path(spec.path).read_text(encoding="utf-8"))
    already = sum(1 for c in cells if store.done_dir(c.id))
    t0 = time.monotonic()
    progress = SweepProgress(total=len(cells), done=already, workers=workers, quiet=quiet, title=spec.name)
    ex = Executor(spec, store, workers=workers, quiet=quiet, cell_cmd=cell_cmd, progress=progress)
    progress.__enter__()
    interrupted = False
    try:
        results = ex.run([c for c in cells if not store.done_dir(c.id)])
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:  # on Ctrl-C only the live display is stopped: the resume hint is the one line printed
        if not interrupted or getattr(progress, "_live", None) is not None:
            progress.__exit__(None, None, None)
    summary = aggregate(spec, cells, store, out)
    wall = time.monotonic() - t0
    timings = {"wall_seconds": round(wall, 1), "workers": workers,
               "cells_run": sum(1 for s in results.values() if s == "done"), "cell_seconds": {}}
    for c in cells:
        d = store.done_dir(c.id)
        if d is not None and (d / CELL_META).is_file():
            timings["cell_seconds"][c.dirname] = json.loads((d / CELL_META).read_text()).get("seconds")
    atomic_write_text(out / "timings.json", json.dumps(timings, indent=2))
    print(f"[sweep {spec.name}] {summary['n_done']}/{summary['n_cells']} cells done in {wall:.0f}s -> "
          f"{out / 'summary.md'}", file=sys.stderr)
    failed = [c.dirname for c in cells if results.get(c.id) == "failed"]
    if failed:
        print(f"[sweep {spec.name}] {len(failed)} cell(s) failed (logs in {store.failed}); "
              "run again to retry them.", file=sys.stderr)
        return 1
    return 0
