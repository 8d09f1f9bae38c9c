"""Read offline W&B runs back with wandb's own reader (``wandb leet inspect``, i.e. wandb-core).

wandb 0.31 has no Python reader for ``.wandb`` transaction logs; its supported one is the
``wandb leet inspect`` command, which runs the bundled wandb-core binary.  We call that binary the
way the command does (``leet inspect --json [--summary] --run-file FILE WANDB_DIR``), with
``python -m wandb leet inspect`` as the fallback when the binary cannot be located.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["read_offline_run", "find_run_file", "records", "wait_for_exit"]


def find_run_file(path: Path | str) -> Path:
    """The ``.wandb`` file of a run: ``path`` itself, an ``offline-run-*`` dir, or a dir holding ``wandb/``.

    With several runs, the newest (``offline-run-<timestamp>-<id>`` sorts by time).
    """
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        for pattern in ("*.wandb", "wandb/offline-run-*/*.wandb", "offline-run-*/*.wandb",
                        "wandb/run-*/*.wandb", "run-*/*.wandb"):
            found = sorted(p.glob(pattern))
            if found:
                return found[-1]
    raise FileNotFoundError(f"no .wandb file under {p}")


def _inspect(run_file: Path, *flags: str, timeout: float = 60.0) -> str:
    try:
        from wandb.util import get_core_path

        cmd = [get_core_path(), "leet", "inspect", "--no-observability", *flags, "--run-file", str(run_file),
               str(run_file.parent.parent)]
    except Exception:  # a wandb without the bundled binary: the public command
        cmd = [sys.executable, "-m", "wandb", "leet", "inspect", *flags, str(run_file)]
    env = {**os.environ, "WANDB_SILENT": "true"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or [f"exit code {res.returncode}"]
        raise RuntimeError(f"wandb leet inspect {run_file}: {tail[0][:300]}")
    return res.stdout


def records(path: Path | str, follow_seconds: float | None = None) -> list[dict]:
    """The run's records as wandb prints them (``{"num", "type", <type>: {...}}``).

    ``follow_seconds``: keep reading until the exit record is written or the file has been idle
    that long (for a run that is still being flushed).
    """
    run_file = find_run_file(path)
    flags = ["--json"]
    timeout = 60.0
    if follow_seconds is not None:
        flags += ["--follow", "--idle-timeout", f"{max(1, int(round(follow_seconds)))}s"]
        timeout += follow_seconds
    out = _inspect(run_file, *flags, timeout=timeout)
    return [json.loads(line) for line in out.splitlines() if line.strip().startswith("{")]


def wait_for_exit(run_path: Path, timeout: float = 10.0) -> bool:
    """Wait until the run's exit record is on disk (wandb-core flushes just after ``finish()``)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            find_run_file(run_path)
            break
        except FileNotFoundError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
    try:
        recs = records(run_path, follow_seconds=max(1.0, deadline - time.monotonic()))
    except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired):
        return False
    return any(r.get("type") == "exit" for r in recs)


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """wandb prints nested keys joined with '.' (``table._type``): rebuild the nesting."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = str(key).split(".")
        cur = out
        for part in parts[:-1]:
            nxt = cur.get(part)
            if not isinstance(nxt, dict):
                nxt = cur[part] = {}
            cur = nxt
        cur[parts[-1]] = value
    return out


def has_logged_data(recs: list[dict]) -> bool:
    """True if a run logged anything of its own (history, a user summary key, an artifact, files)."""
    for r in recs:
        kind = r.get("type")
        if kind in ("history", "artifact", "files", "exit"):
            return True
        if kind == "summary":
            upd = (r.get("summary") or {}).get("update") or {}
            if any(not str(k).startswith("_") for k in upd):
                return True
    return False


def read_offline_run(path: Path | str) -> dict[str, Any]:
    """Read back a run: ``{"run_id", "name", "group", "job_type", "state", "exit_code", "config",
    "summary", "history", "artifacts", "files"}``.

    ``path`` is a ``.wandb`` file, an ``offline-run-*`` directory, or a run dir containing ``wandb/``.
    Config and summary are wandb's own view (``wandb leet inspect --summary``); history rows,
    artifacts and files come from the record stream.
    """
    run_file = find_run_file(path)
    summ = json.loads(_inspect(run_file, "--summary", "--json"))
    out: dict[str, Any] = {
        "run_id": summ.get("run_id"), "name": summ.get("name"), "group": None, "job_type": None,
        "state": summ.get("state"), "exit_code": summ.get("exit_code"),
        "config": summ.get("config") or {}, "summary": summ.get("summary") or {},
        "history": [], "artifacts": [], "files": [],
    }
    for r in records(run_file):
        kind = r.get("type")
        body = r.get(kind) or {}
        if kind == "run":
            out["group"] = body.get("run_group")
            out["job_type"] = body.get("job_type")
        elif kind == "history":
            out["history"].append(_nest(body.get("item") or {}))
        elif kind == "artifact":
            out["artifacts"].append({"name": body.get("name"), "type": body.get("type")})
        elif kind == "files":
            out["files"].extend(f.get("path") for f in body.get("files") or [])
    return out
