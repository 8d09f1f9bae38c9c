"""W&B sweeps: ``lab sweep FILE --wandb`` (create the sweep on W&B's server and run agents) and
``lab sweep FILE --agent SWEEP_ID`` (join an existing sweep).  The agent's runs execute the same
cell entry point as the local executor, so their cells land in the same store."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from lab.sweep.cells import CELL_META, Cell, Store, make_cell
from lab.sweep.executor import Executor
from lab.sweep.spec import SweepSpec
from lab.sweep.summary import aggregate

__all__ = ["wandb_sweep", "run_agent", "cells_of_sweep"]


def _project(spec: SweepSpec) -> tuple[str, str | None]:
    return (os.environ.get("WANDB_PROJECT") or spec.raw.get("project") or "lab",
            os.environ.get("WANDB_ENTITY") or spec.raw.get("entity"))


def _need_server(spec: SweepSpec, flag: str) -> str | None:
    """Why a W&B sweep cannot run here (None when it can)."""
    from lab.tracking import resolve_mode, server_reachable

    if resolve_mode("auto") != "online":
        return (f"lab sweep {flag}: no W&B credentials (set WANDB_API_KEY or run `wandb login`). "
                f"Without a server, run `lab sweep {spec.path}` locally and `wandb sync` the cells later.")
    ok, why = server_reachable(timeout=5.0)
    if not ok:
        return (f"lab sweep {flag}: W&B server unreachable ({why}). W&B sweeps need the server, even with a "
                f"local controller. Run `lab sweep {spec.path}` (offline executor) and `wandb sync` later.")
    return None


def wandb_sweep(spec: SweepSpec, store: Store, workers: int, quiet: bool, cell_cmd: list[str] | None) -> int:
    from lab.tracking import redact

    problem = _need_server(spec, "--wandb")
    if problem:
        print(problem, file=sys.stderr)
        return 2
    import wandb

    project, entity = _project(spec)
    try:
        sweep_id = wandb.sweep(spec.wandb_config(), project=project, entity=entity)
    except Exception as e:
        print(f"lab sweep --wandb: creating the W&B sweep failed: {redact(str(e))[:300]}", file=sys.stderr)
        return 2
    if not sweep_id:
        print("lab sweep --wandb: W&B did not return a sweep id (see the messages above).", file=sys.stderr)
        return 2
    agent_cmd = ["lab", "sweep", str(spec.path), "--out", str(store.out), "--agent", sweep_id]
    print(f"W&B sweep {sweep_id} (project {project}); more agents: `wandb agent "
          f"{(entity + '/') if entity else ''}{project}/{sweep_id}` or `{shlex.join(agent_cmd)}`", file=sys.stderr)
    extra = [subprocess.Popen([sys.executable, "-m", *agent_cmd] + (["--quiet"] if quiet else []))
             for _ in range(max(0, workers - 1))]
    rc = run_agent(spec, store, sweep_id, quiet, cell_cmd)
    for p in extra:
        rc = max(rc, p.wait())
    aggregate(spec, cells_of_sweep(spec, store), store, store.out)
    return rc


def cells_of_sweep(spec: SweepSpec, store: Store) -> list[Cell]:
    """Cells in the store that this sweep ran (W&B's controller, not lab, chose them)."""
    cells = []
    for meta in sorted(store.cells.glob(f"*/{CELL_META}")):
        try:
            m = json.loads(meta.read_text(encoding="utf-8"))
        except ValueError:
            continue
        if m.get("sweep") == spec.name and (meta.parent / "metrics.json").is_file():
            cells.append(make_cell(spec, m.get("params") or {}, index=len(cells)))
    return cells


def run_agent(spec: SweepSpec, store: Store, sweep_id: str, quiet: bool, cell_cmd: list[str] | None) -> int:
    """Run a W&B agent for ``sweep_id`` whose runs are cells of this store."""
    problem = _need_server(spec, "--agent")
    if problem:
        print(problem, file=sys.stderr)
        return 2
    import wandb

    from lab.tracking import start_tracking

    project, entity = _project(spec)
    store.setup()
    ex = Executor(spec, store, workers=1, quiet=quiet, cell_cmd=cell_cmd, online=True)

    def run_one() -> None:
        ppath = Path(os.environ["WANDB_SWEEP_PARAM_PATH"]).resolve()
        os.environ["WANDB_SWEEP_PARAM_PATH"] = str(ppath)
        raw = yaml.safe_load(ppath.read_text(encoding="utf-8")) or {}
        params = {k: (v["value"] if isinstance(v, dict) and "value" in v else v)
                  for k, v in raw.items() if not str(k).startswith("_wandb")}
        cell = make_cell(spec, params)
        status = ex.run_cell(cell, params_path=ppath)
        if status == "skipped":  # already in the store: report its metrics to this W&B run
            d = store.done_dir(cell.id)
            tr = start_tracking(d, cell.config, mode="online", job_type="sweep-cell")
            tr.log_metrics(json.loads((d / "metrics.json").read_text(encoding="utf-8")))
            tr.finish()
        elif status not in ("done", "recovered"):
            raise RuntimeError(f"cell {cell.dirname}: {status}")

    try:
        wandb.agent(sweep_id, function=run_one, project=project, entity=entity)
    except KeyboardInterrupt:
        raise
    except Exception as e:
        print(f"lab sweep --agent: {e.__class__.__name__}: {str(e)[:300]}", file=sys.stderr)
        return 1
    return 0
