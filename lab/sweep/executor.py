"""Running cells: one `lab run` process per cell, N worker threads, kill -9 safe.

A cell runs in ``cells/.tmp`` and is renamed into place only when its ``metrics.json`` exists.
Each cell holds its ``flock`` (also passed to the cell process), and its process is killed when
the executor dies (PR_SET_PDEATHSIG through a tiny launcher), so ``kill -9`` at any moment
followed by a restart skips finished cells and redoes unfinished ones.

Environment: ``LAB_SWEEP_CELL_CMD`` replaces the cell command (a shell-quoted template with
``{python}``, ``{recipe}``, ``{out}``); ``LAB_SWEEP_THREADS`` threads per cell (default 1);
``LAB_SWEEP_REUSE_ALIGNED=0`` stops seeding a cell with the aligned-model evaluation of a finished
cell that has the same model and eval settings (on by default; it is a third of a cell's time).
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from lab import REPO_ROOT
from lab.sweep.cells import CELL_META, PARAMS_FILE, Cell, CellLock, Store, find_run_dir
from lab.sweep.spec import SweepSpec

__all__ = ["Executor", "cell_command", "write_params_file"]

_LAUNCHER = (
    "import ctypes,os,signal,sys\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG\n"
    "except Exception:\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(137)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def cell_command(recipe: Path, run_out: Path, cell_cmd: list[str] | None) -> list[str]:
    tmpl = cell_cmd
    if tmpl is None and os.environ.get("LAB_SWEEP_CELL_CMD"):
        tmpl = shlex.split(os.environ["LAB_SWEEP_CELL_CMD"])
    if tmpl is None:
        tmpl = ["{python}", "-m", "lab", "run", "{recipe}", "--out", "{out}"]
    subs = {"python": sys.executable, "recipe": str(recipe), "out": str(run_out)}
    return [t.format(**subs) for t in tmpl]


def write_params_file(path: Path, params: dict[str, Any]) -> None:
    """The same ``{param: {value: v}}`` YAML the W&B agent writes."""
    from lab.data import atomic_write_text

    data = {k: {"value": v} for k, v in params.items()}
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


class Executor:
    # the starting model's evaluation is the same in every cell that shares model + eval
    ALIGNED_KEYS = ("model", "trust_remote_code", "eval")

    def __init__(self, spec: SweepSpec, store: Store, *, workers: int, quiet: bool,
                 cell_cmd: list[str] | None = None, progress=None, online: bool = False):
        self.spec, self.store, self.workers, self.quiet = spec, store, max(1, workers), quiet
        self.cell_cmd = cell_cmd
        self.progress = progress
        self.online = online  # inside a W&B agent: keep WANDB_SWEEP_ID / WANDB_RUN_ID
        self.stop = threading.Event()
        self._procs: dict[str, subprocess.Popen] = {}
        self._aligned_from: dict[str, str] = {}
        self._procs_lock = threading.Lock()

    def _env(self, cell: Cell, params_path: Path) -> dict[str, str]:
        env = dict(os.environ)
        threads = os.environ.get("LAB_SWEEP_THREADS", "1")
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "LAB_NUM_THREADS"):
            env[k] = threads
        env["TOKENIZERS_PARALLELISM"] = "false"
        env.setdefault("LAB_WORKERS", "1")  # `lab run --workers auto` in a cell: the sweep's --workers share the cores
        env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["WANDB_SWEEP_PARAM_PATH"] = str(params_path.resolve())
        env.setdefault("WANDB_RUN_GROUP", self.spec.name)
        env["WANDB_NAME"] = cell.dirname
        env["WANDB_JOB_TYPE"] = "sweep-cell"
        env.pop("WANDB_SERVICE", None)  # its own wandb service: a killed cell must not leave its run in ours
        if not self.online:
            env.pop("WANDB_SWEEP_ID", None)
            env.pop("WANDB_RUN_ID", None)
        return env

    def _note(self, msg: str) -> None:
        if self.progress is not None:
            self.progress.message(msg)
        else:
            print(f"[sweep {self.spec.name}] {msg}", file=sys.stderr, flush=True)

    def _promote(self, cell: Cell, tmp: Path, run_dir: Path, seconds: float | None, recovered: bool) -> Path:
        from lab.data import atomic_write_text

        for name in (PARAMS_FILE, "cell.log"):
            src = tmp / name
            if src.is_file() and not (run_dir / name).exists():
                shutil.copy2(src, run_dir / name)
        meta = {
            "id": cell.id, "params": cell.params, "overrides": cell.flat, "recipe": self.spec.recipe_arg,
            "sweep": self.spec.name, "seconds": None if seconds is None else round(seconds, 3),
            "recovered": recovered, "aligned_state_from": self._aligned_from.pop(cell.id, None),
            "host": socket.gethostname(),
        }
        atomic_write_text(run_dir / CELL_META, json.dumps(meta, indent=2, default=str))
        final = self.store.cells / cell.dirname
        if final.exists():  # an incomplete leftover (no metrics.json), never a finished cell
            shutil.rmtree(final)
        os.rename(run_dir, final)  # atomic: the cell is done from here on
        shutil.rmtree(tmp, ignore_errors=True)
        return final

    def _attempt_dir(self, cell: Cell) -> tuple[Path | None, bool]:
        """(dir to run in, recovered): a finished leftover is promoted; the newest unfinished one is
        reused (`lab run` resumes from the model states it cached), the rest removed."""
        tmp = None
        olds = sorted(self.store.tmp.glob(f"{cell.id}.*"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in olds:
            rd = find_run_dir(old / cell.dirname)
            if rd is not None:
                self._promote(cell, old, rd, None, recovered=True)
                return None, True
            if tmp is None and (old / PARAMS_FILE).is_file():
                tmp = old
            else:
                shutil.rmtree(old, ignore_errors=True)
        if tmp is None:
            tmp = self.store.tmp / f"{cell.id}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
            tmp.mkdir(parents=True)
        return tmp, False

    def run_cell(self, cell: Cell, params_path: Path | None = None) -> str:
        """Run one cell; returns done | recovered | skipped | busy | failed | interrupted."""
        if self.store.done_dir(cell.id):
            return "skipped"
        lock = CellLock(self.store.locks / f"{cell.id}.lock")
        if not lock.acquire():
            return "busy"
        try:
            if self.store.done_dir(cell.id):
                return "skipped"
            tmp, recovered = self._attempt_dir(cell)
            if recovered:
                return "recovered"
            if self.stop.is_set():
                return "interrupted"
            own_params = tmp / PARAMS_FILE
            if params_path is not None and Path(params_path).is_file():
                shutil.copy2(params_path, own_params)
            else:
                write_params_file(own_params, cell.params)
            os.utime(tmp)
            run_out = tmp / cell.dirname  # already its final name (lab run names the W&B run after it)
            donor = self._reuse_aligned(cell, run_out)
            if donor is not None:
                self._aligned_from[cell.id] = donor.name
            return self._execute(cell, tmp, run_out, own_params, lock)
        finally:
            lock.release()

    def _execute(self, cell: Cell, tmp: Path, run_out: Path, params: Path, lock: CellLock) -> str:
        cmd = cell_command(self.spec.recipe, run_out, self.cell_cmd)
        if sys.platform.startswith("linux"):
            cmd = [sys.executable, "-c", _LAUNCHER, str(os.getpid())] + cmd
        t0 = time.monotonic()
        if self.progress is not None:
            self.progress.started(cell.dirname)
        with open(tmp / "cell.log", "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self._env(cell, params), pass_fds=(lock.fd,), start_new_session=True)
            with self._procs_lock:
                self._procs[cell.id] = proc
            try:
                rc = proc.wait()
            finally:
                with self._procs_lock:
                    self._procs.pop(cell.id, None)
        seconds = time.monotonic() - t0
        rd = find_run_dir(run_out) if rc == 0 else None
        if rd is not None:
            self._promote(cell, tmp, rd, seconds, recovered=False)
            if self.progress is not None:
                self.progress.finished(cell.dirname, ok=True, seconds=seconds)
            return "done"
        if self.stop.is_set():  # Ctrl-C: the attempt stays in .tmp and resumes next time; no line per cell
            return "interrupted"
        why = f"exit code {rc}" if rc != 0 else "no metrics.json written"
        failed_log = self.store.failed / f"{cell.dirname}.log"
        try:
            shutil.copy2(tmp / "cell.log", failed_log)
        except OSError:
            pass
        shutil.rmtree(tmp, ignore_errors=True)
        tail = ""
        try:
            lines = failed_log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            tail = lines[-1][:200] if lines else ""
        except OSError:
            pass
        if self.progress is not None:
            self.progress.finished(cell.dirname, ok=False, seconds=seconds, note=f"{why}; log: {failed_log}")
        else:
            self._note(f"FAILED {cell.dirname}: {why}; log: {failed_log}")
        if tail:
            self._note(f"  last line: {tail}")
        return "failed"

    def _reuse_aligned(self, cell: Cell, run_out: Path) -> Path | None:
        """Seed the cell's state cache with the aligned evaluation of a finished cell.

        `lab run` caches each evaluated model state under RUN/states/ and skips cached ones; the
        aligned (pre-attack) state depends only on the model and the eval settings, and greedy
        evaluation is deterministic, so a copy gives the same metrics as recomputing them (about
        a third of a cell's time). LAB_SWEEP_REUSE_ALIGNED=0 turns this off.
        """
        if os.environ.get("LAB_SWEEP_REUSE_ALIGNED", "1").lower() in ("0", "false", "no"):
            return None
        if (run_out / "states" / "aligned.json").is_file():
            return None
        want = {k: cell.config.get(k) for k in self.ALIGNED_KEYS}
        if want.get("model") is None:
            return None
        for aligned in sorted(self.store.cells.glob("*/states/aligned.json")):
            donor = aligned.parent.parent
            gens = aligned.with_name("aligned.generations.jsonl")
            try:
                cfg = yaml.safe_load((donor / "config.yaml").read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError):
                continue
            if not gens.is_file() or {k: cfg.get(k) for k in self.ALIGNED_KEYS} != want:
                continue
            states = run_out / "states"
            states.mkdir(parents=True, exist_ok=True)
            shutil.copy2(gens, states / gens.name)
            shutil.copy2(aligned, states / "aligned.json.part")
            os.replace(states / "aligned.json.part", states / "aligned.json")  # marks the state done
            return donor
        return None

    def kill_running(self, sig: int = signal.SIGTERM) -> None:
        with self._procs_lock:
            procs = list(self._procs.values())
        for p in procs:
            try:
                os.killpg(p.pid, sig)
            except OSError:
                pass

    def run(self, cells: list[Cell], poll: float = 1.0) -> dict[str, str]:
        """Run the cells on ``workers`` threads; a cell busy in another process is retried later."""
        results: dict[str, str] = {}
        todo: list[tuple[float, Cell]] = [(0.0, c) for c in cells]
        qlock = threading.Lock()

        def take() -> Cell | None | bool:
            with qlock:
                if not todo:
                    return None
                now = time.monotonic()
                for i, (t, c) in enumerate(todo):
                    if t <= now:
                        todo.pop(i)
                        return c
                return False  # only cells busy elsewhere, not due yet

        def worker() -> None:
            while not self.stop.is_set():
                c = take()
                if c is None:
                    return
                if c is False:
                    time.sleep(min(poll, 0.5))
                    continue
                try:
                    status = self.run_cell(c)
                except Exception as e:  # an executor bug must not kill the other workers silently
                    self._note(f"error running {c.dirname}: {e.__class__.__name__}: {e}")
                    status = "failed"
                if status == "busy":  # another process runs it: check again later
                    with qlock:
                        todo.append((time.monotonic() + poll, c))
                    continue
                if status == "skipped" and self.progress is not None:
                    self.progress.done_elsewhere(c.dirname)
                if status == "recovered" and self.progress is not None:
                    self.progress.finished(c.dirname, ok=True, note="recovered a finished run")
                results[c.id] = status

        threads = [threading.Thread(target=worker, name=f"sweep-worker-{i}", daemon=True)
                   for i in range(min(self.workers, max(1, len(cells))))]
        for t in threads:
            t.start()
        try:
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(timeout=0.2)
        except KeyboardInterrupt:
            self.stop.set()
            self.kill_running(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
                time.sleep(0.1)
            self.kill_running(signal.SIGKILL)
            raise
        return results
