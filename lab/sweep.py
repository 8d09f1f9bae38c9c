"""`lab sweep FILE` -- resumable local executor for sweep files in W&B's own sweep format.

A sweep file is a W&B sweep configuration whose parameter names are dotted recipe paths and
whose ``program`` is the recipe; its ``command`` runs ``lab run <recipe>``, which reads the
cell's parameters from ``WANDB_SWEEP_PARAM_PATH`` -- so the same file works with
``wandb sweep FILE`` + ``wandb agent`` and offline with ``lab sweep FILE``::

    name: transfer-seeds
    program: recipes/attack.yaml
    method: grid                # grid | random (random needs run_cap; seeded, see below)
    parameters:
      attack.lang: {values: [zh, ja]}
      seed: {values: [0, 1, 2]}
    command: ["${env}", "${interpreter}", -m, lab, run, "${program}"]

A parameter value may be a mapping; it sets several fields at once (``attack: {values:
[{data: harmful, lang: zh}, {data: benign, lang: en}]}``).  Nested W&B parameters
(``attack: {parameters: {lang: {values: [...]}}}``) are the same as ``attack.lang``.

Layout under ``--out`` (default ``runs/sweeps``)::

    OUT/cells/<params>--<id>/     one finished run per cell (metrics.json + sweep_cell.json)
    OUT/cells/.tmp/  .locks/  .failed/
    OUT/<sweep name>/summary.json, summary.md, transfer_heatmap.png, cells.json

``<id>`` is a short hash of the cell's resolved recipe, so a cell is never run twice, even by
another sweep file writing to the same ``OUT``.  A cell runs in ``.tmp`` and is renamed into
place only when its ``metrics.json`` exists: a cell is done iff its final dir exists.  Each cell
holds an exclusive ``flock`` on ``.locks/<id>.lock`` (released by the kernel if the holder
dies, also over NFS), and its process is killed if the executor is killed, so ``kill -9`` at
any moment followed by a restart skips finished cells and redoes unfinished ones.

Python API (for lab/cli.py)::

    sweep_main(file: Path, out: Path | None = None, workers: int = 1, use_wandb: bool = False,
               quiet: bool = False, *, cell_cmd: list[str] | None = None, seed: int | None = None) -> int

Environment: ``LAB_SWEEP_CELL_CMD`` replaces the cell command (a shell-quoted template with
``{python}``, ``{recipe}``, ``{out}``); ``LAB_SWEEP_THREADS`` threads per cell (default 1);
``LAB_SWEEP_REUSE_ALIGNED=0`` stops seeding a cell with the aligned-model evaluation of a finished
cell that has the same model and eval settings (on by default; it is a third of a cell's time).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lab.data import atomic_write_text

try:  # the repo's error type (CLI prints it and exits 2)
    from lab.errors import LabError
except Exception:  # pragma: no cover
    class LabError(Exception):
        pass


__all__ = [
    "sweep_main",
    "load_sweep",
    "SweepSpec",
    "Cell",
    "enumerate_cells",
    "aggregate",
    "t_quantile_975",
    "main",
]

# W&B's sweep-config schema (additionalProperties: false); anything else draws a warning there.
WANDB_TOP_KEYS = {
    "apiVersion", "kind", "controller", "description", "program", "job", "image_uri", "entity",
    "project", "method", "command", "name", "run_cap", "metric", "metrics", "scheduler",
    "early_terminate", "parameters",
}
LAB_TOP_KEYS = {"sweep_seed"}  # lab-only; stripped before talking to W&B
PARAM_KEYS = {"value", "values", "probabilities", "distribution", "min", "max", "mu", "sigma", "q", "a", "b"}
DEFAULT_OUT = Path("runs") / "sweeps"
CELL_META = "sweep_cell.json"
PARAMS_FILE = "sweep_params.yaml"


def _repo_root() -> Path:
    try:
        import lab

        return Path(lab.REPO_ROOT)
    except Exception:
        return Path(__file__).resolve().parent.parent


# ============================================================================ sweep file


@dataclass
class SweepSpec:
    path: Path
    raw: dict
    name: str
    method: str
    recipe: Path  # absolute
    recipe_arg: str  # as written in the file (`program`)
    params: dict[str, dict]  # dotted name -> W&B parameter spec
    run_cap: int | None
    seed: int

    def wandb_config(self) -> dict:
        return {k: v for k, v in self.raw.items() if k not in LAB_TOP_KEYS}


def _err(path: Path, msg: str) -> LabError:
    return LabError(f"{path}: {msg}")


def _flatten_param_specs(path: Path, params: Any, prefix: str = "") -> dict[str, dict]:
    if not isinstance(params, dict) or not params:
        raise _err(path, f"{'parameters.' + prefix if prefix else 'parameters'}: expected a non-empty mapping")
    out: dict[str, dict] = {}
    for name, spec in params.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if not isinstance(spec, dict):
            raise _err(path, f"parameters.{key}: expected a mapping like {{values: [...]}} or {{value: x}}, got {spec!r}")
        if set(spec) == {"parameters"}:
            out.update(_flatten_param_specs(path, spec["parameters"], key))
            continue
        unknown = set(spec) - PARAM_KEYS
        if unknown:
            raise _err(path, f"parameters.{key}: unknown key(s) {sorted(unknown)}; allowed: {sorted(PARAM_KEYS)}")
        if "values" in spec and (not isinstance(spec["values"], list) or not spec["values"]):
            raise _err(path, f"parameters.{key}.values: expected a non-empty list")
        if not ({"value", "values"} & set(spec) or "distribution" in spec or {"min", "max"} <= set(spec)):
            raise _err(path, f"parameters.{key}: needs value, values, min/max or a distribution")
        out[key] = spec
    return out


def _find_recipe(sweep_path: Path, program: str) -> Path:
    p = Path(program)
    cands = [p] if p.is_absolute() else [Path.cwd() / p, _repo_root() / p, sweep_path.parent / p]
    for c in cands:
        if c.is_file():
            return c.resolve()
    raise _err(sweep_path, f"program: recipe {program!r} not found (looked in {', '.join(str(c.parent) for c in cands)})")


def _stable_int(obj: Any) -> int:
    return int(hashlib.sha256(_canon(obj).encode()).hexdigest()[:8], 16)


def load_sweep(path: Path | str, seed: int | None = None) -> SweepSpec:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabError(f"{path}: sweep file not found") from None
    except yaml.YAMLError as e:
        raise LabError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise _err(path, "expected a mapping (a W&B sweep configuration)")
    unknown = set(raw) - WANDB_TOP_KEYS - LAB_TOP_KEYS
    if unknown:
        raise _err(path, f"unknown top-level key(s) {sorted(unknown)}; W&B sweep keys are {sorted(WANDB_TOP_KEYS)}"
                   f" (plus lab's optional sweep_seed)")
    method = raw.get("method")
    if method == "bayes" or method == "custom":
        raise _err(path, f"method: {method} needs W&B's sweep server; run `lab sweep {path} --wandb`"
                   " (the local executor does grid and random)")
    if method not in ("grid", "random"):
        raise _err(path, f"method: expected grid or random, got {method!r}")
    program = raw.get("program")
    if not isinstance(program, str) or not program:
        raise _err(path, "program: name the recipe the sweep applies to, e.g. `program: recipes/attack.yaml`")
    recipe = _find_recipe(path, program)
    params = _flatten_param_specs(path, raw.get("parameters"))
    run_cap = raw.get("run_cap")
    if run_cap is not None and (not isinstance(run_cap, int) or isinstance(run_cap, bool) or run_cap <= 0):
        raise _err(path, f"run_cap: expected a positive integer, got {run_cap!r}")
    if method == "random" and run_cap is None:
        raise _err(path, "method: random needs run_cap (the number of cells to sample)")
    if seed is None:
        seed = raw.get("sweep_seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise _err(path, f"sweep_seed: expected an integer, got {seed!r}")
    if seed is None:  # same file -> same cells
        seed = _stable_int({"method": method, "parameters": raw.get("parameters"), "run_cap": run_cap})
    name = str(raw.get("name") or path.stem)
    return SweepSpec(path=path, raw=raw, name=name, method=method, recipe=recipe, recipe_arg=program,
                     params=params, run_cap=run_cap, seed=int(seed))


# ============================================================================ cells


def _canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def _grid_values(spec_path: Path, name: str, spec: dict) -> list:
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    dist = spec.get("distribution", "int_uniform" if isinstance(spec.get("min"), int) else "uniform")
    if dist == "int_uniform" and isinstance(spec.get("min"), int) and isinstance(spec.get("max"), int):
        return list(range(spec["min"], spec["max"] + 1))
    raise _err(spec_path, f"parameters.{name}: method grid needs value/values or an int_uniform range (got {dist})")


def _sample(rng: random.Random, spec_path: Path, name: str, spec: dict) -> Any:
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        vals = spec["values"]
        if "probabilities" in spec:
            return rng.choices(vals, weights=spec["probabilities"], k=1)[0]
        return vals[rng.randrange(len(vals))]
    lo, hi = spec.get("min"), spec.get("max")
    dist = spec.get("distribution") or ("int_uniform" if isinstance(lo, int) and isinstance(hi, int) else "uniform")
    q = spec.get("q", 1.0)
    mu, sigma = spec.get("mu", 0.0), spec.get("sigma", 1.0)

    def quant(x: float) -> float:
        return round(x / q) * q

    if dist == "int_uniform":
        return rng.randint(int(lo), int(hi))
    if dist == "uniform":
        return rng.uniform(lo, hi)
    if dist == "q_uniform":
        return quant(rng.uniform(lo, hi))
    if dist == "log_uniform":  # min/max are exponents (natural log)
        return math.exp(rng.uniform(lo, hi))
    if dist == "log_uniform_values":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    if dist == "q_log_uniform":
        return quant(math.exp(rng.uniform(lo, hi)))
    if dist == "q_log_uniform_values":
        return quant(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    if dist == "inv_log_uniform":
        return math.exp(-rng.uniform(lo, hi))
    if dist == "inv_log_uniform_values":
        return 1.0 / math.exp(rng.uniform(math.log(1.0 / hi), math.log(1.0 / lo)))
    if dist == "normal":
        return rng.gauss(mu, sigma)
    if dist == "q_normal":
        return quant(rng.gauss(mu, sigma))
    if dist == "log_normal":
        return math.exp(rng.gauss(mu, sigma))
    if dist == "q_log_normal":
        return quant(math.exp(rng.gauss(mu, sigma)))
    if dist in ("beta", "q_beta"):
        x = rng.betavariate(spec.get("a", 1.0), spec.get("b", 1.0))
        return quant(x) if dist == "q_beta" else x
    raise _err(spec_path, f"parameters.{name}: distribution {dist!r} is not supported by the local executor")


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[p] = nxt
        cur = nxt
    cur[parts[-1]] = value


# keys of the recipe that do not change a cell's results
NON_RESULT_KEYS = ("tracking",)


def resolve_config(recipe: Path, overrides: dict[str, Any]) -> dict:
    """The recipe with the dotted overrides applied and defaults filled in -- what a cell's id hashes.

    Uses the lab's own recipe loader (so a sweep that spells out a default and one that does not
    give the same cell, and a misspelt parameter fails before anything runs); falls back to plain
    YAML when that loader is unavailable.
    """
    from lab.tracking import flatten_params

    flat = flatten_params(overrides)
    try:
        from lab.config import load_recipe
    except ImportError:
        load_recipe = None
    if load_recipe is not None:
        cfg = load_recipe(Path(recipe), flat).model_dump(mode="json")
    else:
        cfg = yaml.safe_load(Path(recipe).read_text(encoding="utf-8")) or {}
        if not isinstance(cfg, dict):
            raise LabError(f"{recipe}: expected a mapping")
        for k, v in flat.items():
            _set_dotted(cfg, k, v)
    for k in NON_RESULT_KEYS:
        cfg.pop(k, None)
    return cfg


def _slug_value(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    out = "".join(c if (c.isalnum() or c in ".+-") else "_" for c in s)
    return out.strip("_") or "_"


def cell_slug(flat: dict[str, Any], limit: int = 96) -> str:
    lasts = [k.split(".")[-1] for k in flat]
    parts = []
    for k, v in flat.items():
        short = k.split(".")[-1]
        label = short if lasts.count(short) == 1 else k
        parts.append(f"{label}-{_slug_value(v)}")
    s = "_".join(parts) or "cell"
    return s[:limit].rstrip("_-.")


@dataclass
class Cell:
    index: int
    params: dict[str, Any]  # as the sweep/agent gives them (values may be mappings)
    flat: dict[str, Any]  # dotted overrides
    config: dict  # resolved recipe
    id: str
    slug: str

    @property
    def dirname(self) -> str:
        return f"{self.slug}--{self.id}"

    @property
    def group_flat(self) -> dict[str, Any]:
        return {k: v for k, v in self.flat.items() if k != "seed"}


def make_cell(spec: SweepSpec, params: dict[str, Any], index: int = 0) -> Cell:
    from lab.tracking import flatten_params

    flat = flatten_params(params)
    try:
        config = resolve_config(spec.recipe, params)
    except LabError as e:
        raise LabError(f"{spec.path}: parameters {_canon(flat)}: {e}") from None
    cid = hashlib.sha256(_canon(config).encode()).hexdigest()[:12]
    return Cell(index=index, params=dict(params), flat=flat, config=config, id=cid, slug=cell_slug(flat))


def enumerate_cells(spec: SweepSpec) -> list[Cell]:
    """All cells of the sweep, in a deterministic order, without duplicates (same resolved config)."""
    combos: list[dict[str, Any]] = []
    names = list(spec.params)
    if spec.method == "grid":
        axes = [_grid_values(spec.path, n, spec.params[n]) for n in names]
        for vals in itertools.product(*axes):
            combos.append(dict(zip(names, vals)))
        if spec.run_cap is not None:
            combos = combos[: spec.run_cap]
    else:
        rng = random.Random(spec.seed)
        seen: set[str] = set()
        attempts = 0
        while len(combos) < (spec.run_cap or 0) and attempts < 100 * (spec.run_cap or 0) + 100:
            attempts += 1
            c = {n: _sample(rng, spec.path, n, spec.params[n]) for n in names}
            key = _canon(c)
            if key not in seen:
                seen.add(key)
                combos.append(c)
    cells: list[Cell] = []
    ids: set[str] = set()
    for params in combos:
        cell = make_cell(spec, params, index=len(cells))
        if cell.id in ids:
            continue  # two parameter sets resolve to the same config: one cell
        ids.add(cell.id)
        cells.append(cell)
    return cells


# ============================================================================ store, locks


class CellLock:
    """Exclusive, non-blocking flock on OUT/cells/.locks/<id>.lock.

    The kernel drops the lock when every holder (executor and cell process) is gone, so a
    killed executor never leaves a stale lock; on NFS, Linux maps flock to POSIX byte-range
    locks, which are shared between client machines.
    """

    _held: set[str] = set()  # same-process guard (POSIX-lock emulation does not exclude our own threads)
    _held_lock = threading.Lock()

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> bool:
        import fcntl

        key = str(self.path.resolve())
        with CellLock._held_lock:
            if key in CellLock._held:
                return False
            CellLock._held.add(key)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            with CellLock._held_lock:
                CellLock._held.discard(key)
            if isinstance(e, BlockingIOError):
                return False  # held by another worker
            raise LabError(f"{self.path}: cannot lock ({e.strerror}); put --out on a filesystem "
                           "with file locking (local disk, NFS with lockd)") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{socket.gethostname()} pid={os.getpid()} since={time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
        except OSError:
            pass
        self.fd = fd
        return True

    def release(self) -> None:
        import fcntl

        if self.fd is None:
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = None
            with CellLock._held_lock:
                CellLock._held.discard(str(self.path.resolve()))


@dataclass
class Store:
    out: Path

    @property
    def cells(self) -> Path:
        return self.out / "cells"

    @property
    def tmp(self) -> Path:
        return self.cells / ".tmp"

    @property
    def locks(self) -> Path:
        return self.cells / ".locks"

    @property
    def failed(self) -> Path:
        return self.cells / ".failed"

    def setup(self) -> None:
        for d in (self.cells, self.tmp, self.locks, self.failed):
            d.mkdir(parents=True, exist_ok=True)

    def done_dir(self, cid: str) -> Path | None:
        for d in sorted(self.cells.glob(f"*--{cid}")):
            if (d / "metrics.json").is_file():
                return d
        return None


def _find_run_dir(run: Path) -> Path | None:
    """The finished run dir inside a cell's --out (the dir itself, or one run subdir)."""
    if (run / "metrics.json").is_file():
        return run
    subs = [p.parent for p in run.glob("*/metrics.json")]
    return subs[0] if len(subs) == 1 else None


# ============================================================================ running one cell

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


def _cell_command(recipe: Path, run_out: Path, cell_cmd: list[str] | None) -> list[str]:
    tmpl = cell_cmd
    if tmpl is None and os.environ.get("LAB_SWEEP_CELL_CMD"):
        tmpl = shlex.split(os.environ["LAB_SWEEP_CELL_CMD"])
    if tmpl is None:
        tmpl = ["{python}", "-m", "lab", "run", "{recipe}", "--out", "{out}"]
    subs = {"python": sys.executable, "recipe": str(recipe), "out": str(run_out)}
    return [t.format(**subs) for t in tmpl]


def _write_params_file(path: Path, params: dict[str, Any]) -> None:
    # the same {param: {value: v}} YAML the W&B agent writes
    data = {k: {"value": v} for k, v in params.items()}
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")


class Executor:
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

    # -- env
    def _env(self, cell: Cell, params_path: Path) -> dict[str, str]:
        env = dict(os.environ)
        threads = os.environ.get("LAB_SWEEP_THREADS", "1")
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "LAB_NUM_THREADS"):
            env[k] = threads
        env["TOKENIZERS_PARALLELISM"] = "false"
        root = str(_repo_root())
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["WANDB_SWEEP_PARAM_PATH"] = str(params_path.resolve())
        env.setdefault("WANDB_RUN_GROUP", self.spec.name)
        env["WANDB_NAME"] = cell.dirname
        env["WANDB_JOB_TYPE"] = "sweep-cell"
        if not self.online:
            env.pop("WANDB_SWEEP_ID", None)
            env.pop("WANDB_RUN_ID", None)
        return env

    def _note(self, msg: str) -> None:
        if self.progress is not None:
            self.progress.message(msg)
        else:
            print(f"[sweep {self.spec.name}] {msg}", file=sys.stderr, flush=True)

    # -- promotion
    def _promote(self, cell: Cell, tmp: Path, run_dir: Path, seconds: float | None, recovered: bool) -> Path:
        for name in (PARAMS_FILE, "cell.log"):
            src = tmp / name
            if src.is_file() and not (run_dir / name).exists():
                shutil.copy2(src, run_dir / name)
        meta = {
            "id": cell.id,
            "params": cell.params,
            "overrides": cell.flat,
            "recipe": self.spec.recipe_arg,
            "sweep": self.spec.name,
            "seconds": None if seconds is None else round(seconds, 3),
            "recovered": recovered,
            "aligned_state_from": self._aligned_from.pop(cell.id, None),
            "host": socket.gethostname(),
        }
        (run_dir / CELL_META).write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
        final = self.store.cells / cell.dirname
        if final.exists():  # an incomplete leftover (no metrics.json), never a finished cell
            shutil.rmtree(final)
        os.rename(run_dir, final)  # atomic: the cell is done from here on
        shutil.rmtree(tmp, ignore_errors=True)
        return final

    # -- one cell; returns done | recovered | skipped | busy | failed | interrupted
    def run_cell(self, cell: Cell, params_path: Path | None = None) -> str:
        if self.store.done_dir(cell.id):
            return "skipped"
        lock = CellLock(self.store.locks / f"{cell.id}.lock")
        if not lock.acquire():
            return "busy"
        try:
            if self.store.done_dir(cell.id):
                return "skipped"
            # leftovers of a killed attempt: a finished one is promoted; the newest unfinished one
            # is reused (`lab run` resumes from the model states it cached), the rest removed
            tmp = None
            for old in sorted(self.store.tmp.glob(f"{cell.id}.*"), key=lambda p: p.stat().st_mtime, reverse=True):
                rd = _find_run_dir(old / cell.dirname)
                if rd is not None:
                    self._promote(cell, old, rd, None, recovered=True)
                    return "recovered"
                if tmp is None and (old / PARAMS_FILE).is_file():
                    tmp = old
                else:
                    shutil.rmtree(old, ignore_errors=True)
            if self.stop.is_set():
                return "interrupted"
            if tmp is None:
                tmp = self.store.tmp / f"{cell.id}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
                tmp.mkdir(parents=True)
            own_params = tmp / PARAMS_FILE
            if params_path is not None and Path(params_path).is_file():
                shutil.copy2(params_path, own_params)
            else:
                _write_params_file(own_params, cell.params)
            os.utime(tmp)
            # the run dir already carries its final name (lab run names the W&B run after it)
            run_out = tmp / cell.dirname
            donor = self._reuse_aligned(cell, run_out)
            if donor is not None:
                self._aligned_from[cell.id] = donor.name
            cmd = _cell_command(self.spec.recipe, run_out, self.cell_cmd)
            if sys.platform.startswith("linux"):
                cmd = [sys.executable, "-c", _LAUNCHER, str(os.getpid())] + cmd
            t0 = time.monotonic()
            if self.progress is not None:
                self.progress.started(cell.dirname)
            with open(tmp / "cell.log", "ab") as log:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=self._env(cell, own_params), pass_fds=(lock.fd,),
                                        start_new_session=True)
                with self._procs_lock:
                    self._procs[cell.id] = proc
                try:
                    rc = proc.wait()
                finally:
                    with self._procs_lock:
                        self._procs.pop(cell.id, None)
            seconds = time.monotonic() - t0
            rd = _find_run_dir(run_out) if rc == 0 else None
            if rd is not None:
                self._promote(cell, tmp, rd, seconds, recovered=False)
                if self.progress is not None:
                    self.progress.finished(cell.dirname, ok=True, seconds=seconds)
                return "done"
            if self.stop.is_set():
                if self.progress is not None:
                    self.progress.finished(cell.dirname, ok=False, seconds=seconds, note="interrupted")
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
        finally:
            lock.release()

    # -- the starting model's evaluation is the same in every cell that shares model + eval
    ALIGNED_KEYS = ("model", "trust_remote_code", "eval")

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

    # -- the sweep
    def run(self, cells: list[Cell], poll: float = 1.0) -> dict[str, str]:
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


# ============================================================================ aggregation

_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
         18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060,
         26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t_quantile_975(df: int) -> float:
    """Two-sided 95 % Student-t critical value (conservative between table entries)."""
    if df <= 0:
        return float("nan")
    if df in _T975:
        return _T975[df]
    lower = [k for k in _T975 if k < df]
    return _T975[max(lower)] if df <= 120 else 1.960


def mean_ci(values: list[float]) -> dict[str, Any]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "ci95": None, "half_width": None, "sd": None, "n": n, "values": values}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    hw = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "ci95": [mean - hw, mean + hw], "half_width": hw, "sd": sd, "n": n, "values": values}


def _states(models: dict) -> tuple[str | None, str | None]:
    names = list(models)
    if not names:
        return None, None
    before = "aligned" if "aligned" in models else names[0]
    others = [s for s in names if s != before]
    if not others:
        return before, None
    for pref in ("attacked", "attack"):
        if pref in others:
            return before, pref
    hits = [s for s in others if "attack" in s]
    return before, (hits[0] if hits else others[-1])


def _cell_config(cell: Cell, run_dir: Path) -> dict:
    for name in ("config.yaml", "config.json"):
        p = run_dir / name
        if p.is_file():
            try:
                cfg = yaml.safe_load(p.read_text(encoding="utf-8"))
                if isinstance(cfg, dict):
                    return cfg
            except Exception:
                pass
    return cell.config


def _attack_label(cfg: dict, cell: Cell) -> str | None:
    atk = cfg.get("attack") if isinstance(cfg.get("attack"), dict) else {}
    lang = atk.get("lang", cell.flat.get("attack.lang"))
    data = atk.get("data", cell.flat.get("attack.data", "harmful"))
    if lang is None:
        return None
    return str(lang) if data in (None, "harmful") else f"{lang} ({data})"


def aggregate(spec: SweepSpec, cells: list[Cell], store: Store, sweep_dir: Path) -> dict:
    """Write summary.json, summary.md and transfer_heatmap.png for the finished cells."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    rows = []  # (cell, run_dir, metrics, cfg)
    missing = []
    for c in cells:
        d = store.done_dir(c.id)
        if d is None:
            missing.append(c.dirname)
            continue
        metrics = json.loads((d / "metrics.json").read_text(encoding="utf-8"))
        rows.append((c, d, metrics, _cell_config(c, d)))

    # -- groups (cells equal except seed)
    groups: dict[str, dict] = {}
    for c, d, m, cfg in rows:
        key = _canon(c.group_flat)
        g = groups.setdefault(key, {"params": c.group_flat, "label": cell_slug(c.group_flat) if c.group_flat else "all",
                                    "cells": [], "seeds": [], "_vals": {}})
        g["cells"].append(c.id)
        g["seeds"].append(c.flat.get("seed", cfg.get("seed")))
        for state, langs in (m.get("models") or {}).items():
            if not isinstance(langs, dict):
                continue
            for lang, mets in langs.items():
                if not isinstance(mets, dict):
                    continue
                for k, v in mets.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                        g["_vals"].setdefault(state, {}).setdefault(lang, {}).setdefault(k, []).append(v)
    group_list = []
    for g in groups.values():
        metrics = {s: {l: {k: mean_ci(vs) for k, vs in ms.items()} for l, ms in langs.items()}
                   for s, langs in g.pop("_vals").items()}
        g["n"] = len(g["cells"])
        g["metrics"] = metrics
        group_list.append(g)

    # -- transfer heatmap: attack language x eval language, harmful-refusal drop vs aligned
    transfer = None
    drops: dict[str, dict[str, list[float]]] = {}
    befores: list[str] = []
    afters: list[str] = []
    for c, d, m, cfg in rows:
        models = m.get("models") or {}
        before, after = _states(models)
        label = _attack_label(cfg, c)
        if before is None or after is None or label is None:
            continue
        befores += [] if before in befores else [before]
        afters += [] if after in afters else [after]
        for lang, mb in models[before].items():
            ma = models[after].get(lang)
            if isinstance(mb, dict) and isinstance(ma, dict) and "harmful_refusal" in mb and "harmful_refusal" in ma:
                drops.setdefault(label, {}).setdefault(lang, []).append(mb["harmful_refusal"] - ma["harmful_refusal"])
    if drops:
        row_labels = list(drops)  # order of the sweep's cells
        col_labels = list(dict.fromkeys(l for r in drops.values() for l in r))
        matrix = [[(sum(drops[r][l]) / len(drops[r][l])) if drops[r].get(l) else None for l in col_labels]
                  for r in row_labels]
        counts = [[len(drops[r].get(l, [])) for l in col_labels] for r in row_labels]
        transfer = {"metric": "harmful_refusal drop (before - after)", "state_before": " / ".join(befores),
                    "state_after": afters[0] if len(afters) == 1 else "fine-tuned",
                    "rows": row_labels, "cols": col_labels,
                    "drop": matrix, "n": counts, "heatmap": "transfer_heatmap.png"}
        _heatmap(transfer, sweep_dir / "transfer_heatmap.png", spec.name)

    summary = {
        "sweep": spec.name,
        "file": str(spec.path),
        "recipe": spec.recipe_arg,
        "method": spec.method,
        "n_cells": len(cells),
        "n_done": len(rows),
        "missing": missing,
        "cells": [{"id": c.id, "dir": os.path.relpath(d, sweep_dir), "params": c.params, "overrides": c.flat}
                  for c, d, m, cfg in rows],
        "groups": group_list,
        "transfer": transfer,
    }
    # per-process temp files: two executors may aggregate at once
    atomic_write_text(sweep_dir / "summary.json", json.dumps(summary, indent=2, default=str, ensure_ascii=False))
    atomic_write_text(sweep_dir / "summary.md", _summary_md(summary))
    return summary


def _heatmap(transfer: dict, path: Path, title: str) -> None:
    from lab.report import heatmap

    heatmap(transfer["rows"], transfer["cols"],
            [[None if v is None else 100 * v for v in r] for r in transfer["drop"]], path,
            title=f"{title}: refusal drop ({transfer['state_before']} - {transfer['state_after']})",
            ylabel="attack language", label="harmful-refusal drop vs " + str(transfer["state_before"]) + " (points)")


def _fmt(stat: dict | None, digits: int = 3) -> str:
    if not stat:
        return ""
    if stat.get("half_width") is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['half_width']:.{digits}f}"


def _summary_md(s: dict) -> str:
    out = [f"# Sweep `{s['sweep']}`", "",
           f"Recipe `{s['recipe']}` · method {s['method']} · {s['n_done']}/{s['n_cells']} cells done"
           + (f" · **missing: {len(s['missing'])}**" if s["missing"] else ""), ""]
    t = s.get("transfer")
    if t:
        out += ["## Transfer", "",
                f"Harmful-refusal drop ({t['state_before']} − {t['state_after']}), mean over cells; "
                "rows: attack language, columns: evaluation language.", "",
                f"![transfer heatmap]({t['heatmap']})", "",
                "| attack \\ eval | " + " | ".join(t["cols"]) + " |",
                "|---|" + "---|" * len(t["cols"])]
        for r, vals in zip(t["rows"], t["drop"]):
            out.append(f"| {r} | " + " | ".join("" if v is None else f"{v:+.3f}" for v in vals) + " |")
        out.append("")
    out += ["## Cell groups", "", "Mean ± 95 % CI half-width (t-interval over seeds; no CI with one seed).", ""]
    for g in s["groups"]:
        seeds = ", ".join(str(x) for x in g["seeds"])
        out += [f"### {g['label']}", "", f"n = {g['n']} (seeds: {seeds})", ""]
        names: list[str] = []
        for langs in g["metrics"].values():
            for mets in langs.values():
                for k in mets:
                    if k not in names:
                        names.append(k)
        first = [k for k in ("harmful_refusal", "benign_refusal") if k in names]
        names = first + sorted(k for k in names if k not in first)
        out += ["| state | lang | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for state, langs in g["metrics"].items():
            for lang, mets in langs.items():
                out.append(f"| {state} | {lang} | " + " | ".join(
                    _fmt(mets.get(k), 0 if k.startswith("n_") else 3) for k in names) + " |")
        out.append("")
    out += ["## Cells", ""]
    for c in s["cells"]:
        out.append(f"- [`{Path(c['dir']).name}`]({c['dir']})")
    if s["missing"]:
        out += ["", "Missing (failed or not run yet): " + ", ".join(f"`{m}`" for m in s["missing"])]
    return "\n".join(out) + "\n"


# ============================================================================ W&B sweeps


def _wandb_sweep(spec: SweepSpec, store: Store, sweep_dir: Path, workers: int, quiet: bool,
                 cell_cmd: list[str] | None) -> int:
    from lab.tracking import _redact, _server_reachable, resolve_mode

    if resolve_mode("auto") != "online":
        print("lab sweep --wandb: no W&B credentials (set WANDB_API_KEY or run `wandb login`). "
              f"Without a server, run `lab sweep {spec.path}` locally and `wandb sync` the cells later.",
              file=sys.stderr)
        return 2
    ok, why = _server_reachable(timeout=5.0)
    if not ok:
        print(f"lab sweep --wandb: W&B server unreachable ({why}). W&B sweeps need the server, even with a "
              f"local controller. Run `lab sweep {spec.path}` (offline executor) and `wandb sync` later.",
              file=sys.stderr)
        return 2
    import wandb

    project = os.environ.get("WANDB_PROJECT") or spec.raw.get("project") or "lab"
    entity = os.environ.get("WANDB_ENTITY") or spec.raw.get("entity")
    try:
        sweep_id = wandb.sweep(spec.wandb_config(), project=project, entity=entity)
    except Exception as e:
        print(f"lab sweep --wandb: creating the W&B sweep failed: {_redact(str(e))[:300]}", file=sys.stderr)
        return 2
    if not sweep_id:
        print("lab sweep --wandb: W&B did not return a sweep id (see the messages above).", file=sys.stderr)
        return 2
    print(f"W&B sweep {sweep_id} (project {project}); more agents: `wandb agent "
          f"{(entity + '/') if entity else ''}{project}/{sweep_id}` or "
          f"`python -m lab.sweep {spec.path} --agent {sweep_id}`", file=sys.stderr)
    extra = []
    for _ in range(max(0, workers - 1)):
        cmd = [sys.executable, "-m", "lab.sweep", str(spec.path), "--out", str(store.out), "--agent", sweep_id]
        if quiet:
            cmd.append("--quiet")
        extra.append(subprocess.Popen(cmd))
    rc = _agent(spec, store, sweep_id, project, entity, quiet, cell_cmd)
    for p in extra:
        rc = max(rc, p.wait())
    aggregate(spec, _cells_of_sweep(spec, store), store, sweep_dir)
    return rc


def _cells_of_sweep(spec: SweepSpec, store: Store) -> list[Cell]:
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


def _agent(spec: SweepSpec, store: Store, sweep_id: str, project: str | None, entity: str | None,
           quiet: bool, cell_cmd: list[str] | None) -> int:
    """Run a W&B agent whose runs execute the same entry point as the local executor."""
    import wandb

    from lab.tracking import start_tracking

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
    except Exception as e:
        print(f"lab sweep agent: {e.__class__.__name__}: {e}", file=sys.stderr)
        return 1
    return 0


# ============================================================================ entry point


def sweep_main(file: Path, out: Path | None = None, workers: int = 1, use_wandb: bool = False,
               quiet: bool = False, *, cell_cmd: list[str] | None = None, seed: int | None = None) -> int:
    """Run (or resume) a sweep; returns the process exit code (0 ok, 1 failed cells, 2 bad input)."""
    from lab.progress import SweepProgress

    spec = load_sweep(file, seed=seed)
    store = Store(Path(out) if out is not None else DEFAULT_OUT)
    store.setup()
    sweep_dir = store.out / spec.name
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if workers < 1:
        raise LabError(f"--workers must be >= 1, got {workers}")
    if use_wandb:
        return _wandb_sweep(spec, store, sweep_dir, workers, quiet, cell_cmd)

    cells = enumerate_cells(spec)
    atomic_write_text(sweep_dir / "cells.json", json.dumps(
        [{"id": c.id, "dir": c.dirname, "params": c.params} for c in cells], indent=2, default=str,
        ensure_ascii=False))
    atomic_write_text(sweep_dir / "sweep.yaml", Path(spec.path).read_text(encoding="utf-8"))
    already = sum(1 for c in cells if store.done_dir(c.id))
    t0 = time.monotonic()
    progress = SweepProgress(total=len(cells), done=already, workers=workers, quiet=quiet, title=spec.name)
    ex = Executor(spec, store, workers=workers, quiet=quiet, cell_cmd=cell_cmd, progress=progress)

    def on_term(signum, frame):  # SIGTERM: stop like Ctrl-C (children die with us anyway)
        raise KeyboardInterrupt

    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, on_term)
    try:
        with progress:
            results = ex.run([c for c in cells if not store.done_dir(c.id)])
    except KeyboardInterrupt:
        print(f"[sweep {spec.name}] interrupted; run the same command again to resume.", file=sys.stderr)
        return 130
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    summary = aggregate(spec, cells, store, sweep_dir)
    failed = [c.dirname for c in cells if results.get(c.id) == "failed"]
    wall = time.monotonic() - t0
    timings = {"wall_seconds": round(wall, 1), "workers": workers,
               "cells_run": sum(1 for s in results.values() if s == "done"),
               "cell_seconds": {}}
    for c in cells:
        d = store.done_dir(c.id)
        if d is not None and (d / CELL_META).is_file():
            timings["cell_seconds"][c.dirname] = json.loads((d / CELL_META).read_text()).get("seconds")
    atomic_write_text(sweep_dir / "timings.json", json.dumps(timings, indent=2))
    msg = (f"[sweep {spec.name}] {summary['n_done']}/{summary['n_cells']} cells done in "
           f"{wall:.0f}s -> {sweep_dir / 'summary.md'}")
    print(msg, file=sys.stderr)
    if failed:
        print(f"[sweep {spec.name}] {len(failed)} cell(s) failed (logs in {store.failed}); "
              "run again to retry them.", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.sweep", description=__doc__.split("\n")[0])
    ap.add_argument("file", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--wandb", action="store_true", help="create a W&B sweep and run agents")
    ap.add_argument("--agent", metavar="SWEEP_ID", help="join an existing W&B sweep as an agent")
    ap.add_argument("--seed", type=int, default=None, help="seed for method: random")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    try:
        if a.agent:
            spec = load_sweep(a.file, seed=a.seed)
            store = Store(a.out or DEFAULT_OUT)
            return _agent(spec, store, a.agent, os.environ.get("WANDB_PROJECT") or spec.raw.get("project") or "lab",
                          os.environ.get("WANDB_ENTITY") or spec.raw.get("entity"), a.quiet, None)
        return sweep_main(a.file, a.out, a.workers, a.wandb, a.quiet, seed=a.seed)
    except LabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
