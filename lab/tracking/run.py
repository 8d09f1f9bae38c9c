"""A W&B run for a lab run or sweep cell: start, log, finish -- offline-first, never fatal.

One run id per run directory: it is stored in ``RUN_DIR/wandb/lab-run-id`` and reused when a killed
run is started again (``resume="allow"``), so a resumed run continues the same W&B run.  An
offline attempt that was killed before it logged anything (config only, no exit record) is
removed on resume: ``wandb sync RUN_DIR/wandb/offline-run-*`` then uploads one run, not an
extra empty one.  Inside a W&B agent (``WANDB_RUN_ID`` set) the agent's id is used.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import string
from pathlib import Path
from typing import Any

from lab.tracking.auth import describe, note, redact, resolve_mode, server_reachable

__all__ = ["Tracker", "NullTracker", "WandbTracker", "start_tracking", "flatten_metrics", "RUN_ID_FILE"]

RUN_ID_FILE = "lab-run-id"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def flatten_metrics(metrics: dict, sep: str = "/") -> dict[str, float]:
    """Flatten a metrics.json dict to scalar W&B keys.

    ``{"models": {"aligned": {"en": {"harmful_refusal": 0.9, "harmful_refusal_ci": [0.8, 0.95]}}}}``
    becomes ``{"aligned/en/harmful_refusal": 0.9, "aligned/en/harmful_refusal_ci_lo": 0.8,
    "aligned/en/harmful_refusal_ci_hi": 0.95}``.  Other numeric top-level sections (e.g.
    ``transfer``) are flattened under their own name; strings and other values are skipped.
    """
    out: dict[str, float] = {}

    def walk(prefix: str, obj: Any) -> None:
        if isinstance(obj, bool):
            out[prefix] = float(obj)
        elif _is_number(obj):
            if isinstance(obj, float) and not math.isfinite(obj):
                return
            out[prefix] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}{sep}{k}" if prefix else str(k), v)
        elif isinstance(obj, (list, tuple)) and len(obj) == 2 and all(_is_number(x) for x in obj):
            out[f"{prefix}_lo"] = obj[0]
            out[f"{prefix}_hi"] = obj[1]

    if isinstance(metrics.get("models"), dict):
        walk("", metrics["models"])
        for k, v in metrics.items():
            if k != "models" and isinstance(v, (dict, int, float)) and not isinstance(v, bool):
                walk(str(k), v)
    else:
        walk("", metrics)
    return out


class Tracker:
    """Interface; also the base of :class:`NullTracker`."""

    mode = "none"
    run_dir: Path | None = None
    url: str | None = None

    def log_metrics(self, metrics: dict) -> None:
        pass

    def log_table(self, key: str, columns: list[str], rows: list[list]) -> None:
        pass

    def log_image(self, key: str, png_path: Path) -> None:
        pass

    def log_artifact(self, path: Path, name: str, type: str) -> None:
        pass

    def finish(self) -> None:
        pass

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc) -> None:
        self.finish()


class NullTracker(Tracker):
    """Tracking off: every call is a no-op and no file is written."""

    def __init__(self, run_dir: Path | None = None):
        self.run_dir = Path(run_dir) if run_dir is not None else None


def _artifact_name(name: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")
    return clean[:128] or "artifact"


class WandbTracker(Tracker):
    """A live wandb run.  Every method swallows W&B errors (one note per tracker)."""

    def __init__(self, run: Any, mode: str, run_dir: Path):
        self.run, self.mode, self.run_dir = run, mode, run_dir
        self._warned = False
        self._finished = False
        try:
            self.url = run.url if mode == "online" else None
        except Exception:
            self.url = None

    @property
    def run_path(self) -> Path | None:
        """The wandb run directory (…/wandb/offline-run-*/ or run-*/)."""
        try:
            return Path(self.run.settings.sync_dir)
        except Exception:
            return None

    def _guard(self, what: str, fn) -> None:
        if self._finished:
            return
        try:
            fn()
        except Exception as e:  # never let tracking kill a run
            if not self._warned:
                self._warned = True
                note(f"{what} failed ({describe(e)}); continuing without it.")

    def log_metrics(self, metrics: dict) -> None:
        flat = flatten_metrics(metrics)
        if not flat:
            return

        def do() -> None:
            self.run.log(flat)
            self.run.summary.update(flat)

        self._guard("logging metrics", do)

    def log_table(self, key: str, columns: list[str], rows: list[list]) -> None:
        def do() -> None:
            import wandb

            self.run.log({key: wandb.Table(columns=list(columns), data=[list(r) for r in rows])})

        self._guard(f"logging table {key!r}", do)

    def log_image(self, key: str, png_path: Path) -> None:
        def do() -> None:
            import wandb

            p = Path(png_path)
            if not p.is_file():
                raise FileNotFoundError(str(p))
            self.run.log({key: wandb.Image(str(p))})

        self._guard(f"logging image {key!r}", do)

    def log_artifact(self, path: Path, name: str, type: str) -> None:
        def do() -> None:
            import wandb

            p = Path(path)
            art = wandb.Artifact(_artifact_name(name), type=type)
            if p.is_dir():
                art.add_dir(str(p))
            elif p.is_file():
                art.add_file(str(p))
            else:
                raise FileNotFoundError(str(p))
            self.run.log_artifact(art)

        self._guard(f"logging artifact {name!r}", do)

    def finish(self) -> None:
        if self._finished:
            return
        from lab.tracking.readback import wait_for_exit

        try:
            path = self.run_path
            self.run.finish()
            if path is not None:  # the run's files are complete when we return (readable, movable)
                wait_for_exit(path)
        except BaseException as e:  # KeyboardInterrupt during upload: still don't crash the run
            if not isinstance(e, Exception):
                self._finished = True
                raise
            if not self._warned:
                note(f"finishing the run failed ({describe(e)}).")
        finally:
            self._finished = True


def _settings(mode: str, quiet: bool) -> Any:
    import wandb

    kw: dict[str, Any] = dict(
        init_timeout=float(os.environ.get("LAB_WANDB_INIT_TIMEOUT", "30")),
        disable_code=True, save_code=False, disable_git=True, x_save_requirements=False,
        x_disable_stats=True, x_disable_machine_info=True, console="off",
        silent=quiet or os.environ.get("WANDB_SILENT", "").lower() in ("1", "true"),
    )
    if mode == "online":
        kw["finish_timeout"] = float(os.environ.get("LAB_WANDB_FINISH_TIMEOUT", "120"))
    known = getattr(wandb.Settings, "model_fields", None)
    if known:  # drop settings this wandb version does not have
        kw = {k: v for k, v in kw.items() if k in known}
    return wandb.Settings(**kw)


def _scrub(config: dict) -> dict:
    """The config with any secret value replaced (a key pasted into a recipe is never logged)."""
    text = json.dumps(config, default=str, ensure_ascii=False)
    clean = redact(text)
    return config if clean == text else json.loads(clean)


def _run_id(run_dir: Path) -> str | None:
    """This run dir's W&B run id (created and stored on first use); None inside a W&B agent."""
    if os.environ.get("WANDB_RUN_ID"):
        return None
    from lab.data import atomic_write_text

    path = run_dir / "wandb" / RUN_ID_FILE
    try:
        rid = path.read_text(encoding="utf-8").strip()
        if re.fullmatch(r"[a-z0-9]{1,64}", rid):
            return rid
    except OSError:
        pass
    rid = "".join(random.SystemRandom().choices(string.ascii_lowercase + string.digits, k=8))  # wandb's id shape
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, rid + "\n")
    return rid


def _drop_empty_attempts(run_dir: Path, run_id: str) -> None:
    """Remove offline runs of this id that were killed before logging anything (see module doc)."""
    from lab.tracking.readback import has_logged_data, records

    for d in sorted((run_dir / "wandb").glob(f"offline-run-*-{run_id}")):
        try:
            if not has_logged_data(records(d)):
                shutil.rmtree(d, ignore_errors=True)
        except (FileNotFoundError, RuntimeError, OSError, ValueError):
            if not list(d.glob("*.wandb")):  # never got as far as its log file
                shutil.rmtree(d, ignore_errors=True)


def _init(run_dir: Path, config: dict, mode: str, name, group, job_type, quiet: bool, run_id: str | None):
    import wandb

    return wandb.init(
        project=os.environ.get("WANDB_PROJECT") or "lab",
        entity=os.environ.get("WANDB_ENTITY") or None,
        dir=str(run_dir), config=config, name=name,
        group=group or os.environ.get("WANDB_RUN_GROUP") or None,
        job_type=os.environ.get("WANDB_JOB_TYPE") or job_type,  # a sweep executor labels its cells
        mode=mode, reinit="create_new", settings=_settings(mode, quiet),
        **({"id": run_id, "resume": "allow"} if run_id else {}),
    )


def _safe_teardown() -> None:
    try:
        import wandb

        if wandb.run is not None:
            wandb.run.finish(exit_code=1)
    except Exception:
        pass
    try:  # a failed init leaves its run id registered in wandb's service: start that afresh
        import wandb

        wandb.teardown()
    except Exception:
        pass


def start_tracking(run_dir: Path, config: dict, mode: str = "auto", name: str | None = None,
                   group: str | None = None, job_type: str = "run", quiet: bool = False) -> Tracker:
    """Start tracking a run whose outputs live in ``run_dir``.  Never raises for W&B problems.

    ``mode`` "none" returns a :class:`NullTracker` (no wandb import, no files).  Offline W&B files
    go to ``run_dir/wandb/``.  An online start that fails (no network, bad key, server error,
    timeout) prints one note and falls back to offline.
    """
    run_dir = Path(run_dir)
    try:
        resolved = resolve_mode(mode)
    except ValueError as e:
        note(f"{e}; tracking off.")
        return NullTracker(run_dir)
    if resolved == "none":
        return NullTracker(run_dir)
    try:
        import wandb  # noqa: F401
    except Exception as e:
        note(f"wandb is not importable ({e.__class__.__name__}); tracking off.")
        return NullTracker(run_dir)

    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = _scrub(dict(config or {}))
    try:
        run_id = _run_id(run_dir)
        if run_id:
            _drop_empty_attempts(run_dir, run_id)
    except Exception as e:
        note(f"could not keep a run id in {run_dir / 'wandb'} ({describe(e)}); a rerun starts a new W&B run.")
        run_id = None

    if resolved == "online":
        ok, why = server_reachable()
        if ok:
            before = set((run_dir / "wandb").glob("run-*"))
            try:
                return WandbTracker(_init(run_dir, cfg, "online", name, group, job_type, quiet, run_id),
                                    "online", run_dir)
            except Exception as e:
                why = describe(e)
                _safe_teardown()
                # drop the empty directory of the failed online attempt (keeps `wandb sync` clean)
                for d in set((run_dir / "wandb").glob("run-*")) - before:
                    shutil.rmtree(d, ignore_errors=True)
        note(f"online tracking unavailable ({why}); logging offline to {run_dir / 'wandb'} "
             f"-- upload later with `wandb sync {run_dir / 'wandb'}/offline-run-*`.")

    try:
        return WandbTracker(_init(run_dir, cfg, "offline", name, group, job_type, quiet, run_id), "offline", run_dir)
    except Exception as e:
        _safe_teardown()
        note(f"offline tracking failed too ({describe(e)}); tracking off for this run.")
        return NullTracker(run_dir)
