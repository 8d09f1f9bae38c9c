"""Cells (one resolved recipe each, content-addressed) and the store they live in, with file locks.

A cell's id is a short hash of its resolved recipe, so a cell is never run twice, even by another
sweep file writing to the same ``--out``.  Store layout under ``OUT/cells/``::

    <params>--<id>/    a finished run (metrics.json + sweep_cell.json); a cell is done iff this exists
    .tmp/              running / interrupted attempts (renamed into place when metrics.json exists)
    .locks/<id>.lock   flock held by the process running the cell
    .failed/<cell>.log the log of the last failed attempt
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.errors import LabError
from lab.sweep.spec import SweepSpec, canon, combinations

__all__ = ["Cell", "make_cell", "enumerate_cells", "resolve_config", "cell_slug", "CellLock", "Store",
           "find_run_dir", "CELL_META", "PARAMS_FILE"]

CELL_META = "sweep_cell.json"
PARAMS_FILE = "sweep_params.yaml"
NON_RESULT_KEYS = ("tracking",)  # recipe keys that do not change a cell's results


def resolve_config(recipe: Path, overrides: dict[str, Any]) -> dict:
    """The recipe with the overrides applied and defaults filled in -- what a cell's id hashes.

    Uses the lab's recipe loader, so a sweep that spells out a default and one that does not give
    the same cell, and a misspelt parameter fails before anything runs.
    """
    from lab.experiments import load_recipe
    from lab.tracking import flatten_params

    loaded = load_recipe(Path(recipe), flatten_params(overrides))
    cfg = loaded.model_dump(mode="json") if hasattr(loaded, "model_dump") else dict(loaded)
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
        parts.append(f"{short if lasts.count(short) == 1 else k}-{_slug_value(v)}")
    return ("_".join(parts) or "cell")[:limit].rstrip("_-.")


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
        raise LabError(f"{spec.path}: parameters {canon(flat)[:300]}: {e}") from None
    cid = hashlib.sha256(canon(config).encode()).hexdigest()[:12]
    return Cell(index=index, params=dict(params), flat=flat, config=config, id=cid, slug=cell_slug(flat))


def enumerate_cells(spec: SweepSpec) -> list[Cell]:
    """All cells of the sweep, in a deterministic order, without duplicates (same resolved config)."""
    cells: list[Cell] = []
    ids: set[str] = set()
    for params in combinations(spec):
        cell = make_cell(spec, params, index=len(cells))
        if cell.id not in ids:  # two parameter sets that resolve to the same config are one cell
            ids.add(cell.id)
            cells.append(cell)
    return cells


class CellLock:
    """Exclusive, non-blocking flock on OUT/cells/.locks/<id>.lock.

    The kernel drops the lock when every holder (executor and cell process) is gone, so a killed
    executor never leaves a stale lock; on NFS, Linux maps flock to POSIX byte-range locks, which
    are shared between client machines.
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
        if self.out.exists() and not self.out.is_dir():
            raise LabError(f"--out {self.out}: is a file; give a directory for the sweep")
        for d in (self.cells, self.tmp, self.locks, self.failed):
            d.mkdir(parents=True, exist_ok=True)

    def done_dir(self, cid: str) -> Path | None:
        for d in sorted(self.cells.glob(f"*--{cid}")):
            if (d / "metrics.json").is_file():
                return d
        return None


def find_run_dir(run: Path) -> Path | None:
    """The finished run dir inside a cell's --out (the dir itself, or one run subdir)."""
    if (run / "metrics.json").is_file():
        return run
    subs = [p.parent for p in run.glob("*/metrics.json")]
    return subs[0] if len(subs) == 1 else None
