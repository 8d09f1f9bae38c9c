"""Weights & Biases tracking for lab runs and sweep cells (offline-first).

The runner uses a handful of calls::

    tracker = start_tracking(run_dir, config, mode="auto", name=..., group=..., job_type="run")
    tracker.log_metrics(metrics)            # the metrics.json layout
    tracker.log_table("transfer", columns, rows)
    tracker.log_image("transfer_heatmap", run_dir / "transfer.png")
    tracker.log_artifact(run_dir / "adapter", name="adapter", type="model")
    tracker.finish()

Modes: ``auto`` (online when an API key is available -- ``WANDB_API_KEY`` or a
``wandb login`` entry in ~/.netrc -- else offline), ``online``, ``offline``,
``none`` (a :class:`NullTracker` that writes nothing).  Offline runs are written
under ``run_dir/wandb/offline-run-*`` and can be uploaded later with
``wandb sync run_dir/wandb/offline-run-*``.

A W&B problem (missing package, unreachable server, init timeout, server error)
never raises out of this module: an online run falls back to offline, a failing
offline run falls back to no tracking, and one note is printed to stderr.  The
API key is never printed.

Knobs (environment): ``WANDB_PROJECT`` (default ``lab``), ``WANDB_ENTITY``,
``LAB_WANDB_INIT_TIMEOUT`` (seconds, default 30), ``LAB_WANDB_FINISH_TIMEOUT``
(seconds to wait for uploads at the end of an online run, default 120).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "Tracker",
    "NullTracker",
    "WandbTracker",
    "start_tracking",
    "resolve_mode",
    "flatten_metrics",
    "sweep_overrides_from_env",
    "read_sweep_params",
    "flatten_params",
    "read_offline_run",
    "MODES",
]

MODES = ("auto", "online", "offline", "none")
_DEFAULT_BASE_URL = "https://api.wandb.ai"
_PREFIX = "lab: W&B"


# ----------------------------------------------------------------------------- helpers


def _secrets() -> list[str]:
    keys = [os.environ.get("WANDB_API_KEY") or ""]
    return [k for k in keys if len(k) >= 8]


def _redact(text: str) -> str:
    for secret in _secrets():
        text = text.replace(secret, "***")
    # anything that looks like a W&B key (40+ word chars) in an error message
    return re.sub(r"\b[A-Za-z0-9_]{40,}\b", "***", text)


def _note(msg: str) -> None:
    print(f"{_PREFIX}: {_redact(msg)}", file=sys.stderr, flush=True)


def _describe(e: BaseException, limit: int = 160) -> str:
    """One short line for an exception (server errors can carry whole HTML pages)."""
    text = " ".join(re.sub(r"<[^>]+>", " ", str(e)).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{e.__class__.__name__}: {text}" if text else e.__class__.__name__


def _base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or _DEFAULT_BASE_URL


def _have_credentials() -> bool:
    """True if W&B credentials are available without touching the network."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:
        from wandb.sdk.lib.wbauth import wbnetrc

        return bool(wbnetrc.read_netrc_auth(host=_base_url()))
    except Exception:  # old/new wandb layout, malformed netrc, ...: parse it ourselves
        pass
    try:
        import netrc

        host = urlsplit(_base_url()).hostname or ""
        path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
        auth = netrc.netrc(path).authenticators(host)
        return bool(auth and auth[2])
    except Exception:
        return False


def resolve_mode(mode: str | None) -> str:
    """Map a requested mode (auto/online/offline/none, or recipe aliases) to online/offline/none."""
    m = (mode or "auto").strip().lower()
    aliases = {"disabled": "none", "off": "none", "false": "none", "no": "none", "dryrun": "offline"}
    m = aliases.get(m, m)
    if m not in MODES:
        raise ValueError(f"tracking mode must be one of {', '.join(MODES)}; got {mode!r}")
    if m != "auto":
        return m
    env_mode = (os.environ.get("WANDB_MODE") or "").strip().lower()
    if env_mode in ("disabled",):
        return "none"
    if env_mode in ("offline", "dryrun"):
        return "offline"
    return "online" if _have_credentials() else "offline"


def _server_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """Quick TCP probe of the W&B server (skipped when a proxy is configured)."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return True, ""
    parts = urlsplit(_base_url())
    host = parts.hostname
    if not host:
        return False, f"WANDB_BASE_URL {_base_url()!r} has no host"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, ""
    except OSError as e:
        return False, f"cannot reach {parts.scheme}://{host}:{port} ({e.__class__.__name__})"


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
        rest = {k: v for k, v in metrics.items() if k != "models"}
        for k, v in rest.items():
            if isinstance(v, (dict, int, float)) and not isinstance(v, bool):
                walk(str(k), v)
    else:
        walk("", metrics)
    return out


# ----------------------------------------------------------------------------- trackers


class Tracker:
    """Interface; also the base of :class:`NullTracker`."""

    mode = "none"
    run_dir: Path | None = None
    url: str | None = None

    def log_metrics(self, metrics: dict) -> None:  # pragma: no cover - interface
        pass

    def log_table(self, key: str, columns: list[str], rows: list[list]) -> None:  # pragma: no cover
        pass

    def log_image(self, key: str, png_path: Path) -> None:  # pragma: no cover
        pass

    def log_artifact(self, path: Path, name: str, type: str) -> None:  # pragma: no cover
        pass

    def finish(self) -> None:  # pragma: no cover
        pass

    # context-manager sugar: `with start_tracking(...) as t:`
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
        self.run = run
        self.mode = mode
        self.run_dir = run_dir
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

    def _guard(self, what: str, fn, *args, **kwargs) -> None:
        if self._finished:
            return
        try:
            fn(*args, **kwargs)
        except Exception as e:  # never let tracking kill a run
            if not self._warned:
                self._warned = True
                _note(f"{what} failed ({_describe(e)}); continuing without it.")

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

            table = wandb.Table(columns=list(columns), data=[list(r) for r in rows])
            self.run.log({key: table})

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
        try:
            path = self.run_path
            self.run.finish()
            if path is not None:
                _wait_for_exit_record(path)
        except BaseException as e:  # KeyboardInterrupt during upload: still don't crash the run
            if not isinstance(e, Exception):
                self._finished = True
                raise
            if not self._warned:
                _note(f"finishing the run failed ({_describe(e)}).")
        finally:
            self._finished = True


def _wait_for_exit_record(run_path: Path, timeout: float = 10.0) -> bool:
    """wandb-core flushes the .wandb log just after finish() returns; wait for its exit record so
    the run's files are complete when we return (a reader, or a rename of the run dir, is safe)."""
    from wandb.proto import wandb_internal_pb2 as pb

    deadline = time.monotonic() + timeout
    while True:
        for f in Path(run_path).glob("*.wandb"):
            try:
                for raw in _iter_wandb_records(f):
                    rec = pb.Record()
                    rec.ParseFromString(raw)
                    if rec.WhichOneof("record_type") == "exit":
                        return True
            except (OSError, ValueError):
                pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _settings(mode: str, quiet: bool) -> Any:
    import wandb

    kw: dict[str, Any] = dict(
        init_timeout=float(os.environ.get("LAB_WANDB_INIT_TIMEOUT", "30")),
        disable_code=True,
        save_code=False,
        disable_git=True,
        x_save_requirements=False,
        x_disable_stats=True,
        x_disable_machine_info=True,
        console="off",
        silent=quiet or os.environ.get("WANDB_SILENT", "").lower() in ("1", "true"),
    )
    if mode == "online":
        kw["finish_timeout"] = float(os.environ.get("LAB_WANDB_FINISH_TIMEOUT", "120"))
    known = getattr(wandb.Settings, "model_fields", None)
    if known:  # drop settings this wandb version does not have
        kw = {k: v for k, v in kw.items() if k in known}
    try:
        return wandb.Settings(**kw)
    except Exception:
        return wandb.Settings(init_timeout=kw.get("init_timeout", 30.0))


def _init(run_dir: Path, config: dict, mode: str, name, group, job_type, quiet: bool):
    import wandb

    return wandb.init(
        project=os.environ.get("WANDB_PROJECT") or "lab",
        entity=os.environ.get("WANDB_ENTITY") or None,
        dir=str(run_dir),
        config=config,
        name=name,
        group=group or os.environ.get("WANDB_RUN_GROUP") or None,
        # a sweep executor labels its cells through the environment
        job_type=os.environ.get("WANDB_JOB_TYPE") or job_type,
        mode=mode,
        reinit="create_new",
        settings=_settings(mode, quiet),
    )


def start_tracking(
    run_dir: Path,
    config: dict,
    mode: str = "auto",
    name: str | None = None,
    group: str | None = None,
    job_type: str = "run",
    quiet: bool = False,
) -> Tracker:
    """Start tracking a run whose outputs live in ``run_dir``.  Never raises for W&B problems.

    ``mode`` "none" returns a :class:`NullTracker` (no wandb import, no files).  Offline
    W&B files go to ``run_dir/wandb/``.  An online start that fails (no network, bad key,
    server error, timeout) prints one note and falls back to offline.
    """
    run_dir = Path(run_dir)
    try:
        resolved = resolve_mode(mode)
    except ValueError as e:
        _note(f"{e}; tracking off.")
        return NullTracker(run_dir)
    if resolved == "none":
        return NullTracker(run_dir)

    try:
        import wandb  # noqa: F401
    except Exception as e:
        _note(f"wandb is not importable ({e.__class__.__name__}); tracking off.")
        return NullTracker(run_dir)

    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = dict(config or {})

    if resolved == "online":
        ok, why = _server_reachable()
        if ok:
            before = set((run_dir / "wandb").glob("run-*"))
            try:
                run = _init(run_dir, cfg, "online", name, group, job_type, quiet)
                return WandbTracker(run, "online", run_dir)
            except Exception as e:
                why = _describe(e)
                _safe_teardown()
                # drop the empty directory of the failed online attempt (keeps `wandb sync` clean)
                for d in set((run_dir / "wandb").glob("run-*")) - before:
                    shutil.rmtree(d, ignore_errors=True)
        _note(
            f"online tracking unavailable ({why}); logging offline to {run_dir / 'wandb'} "
            f"-- upload later with `wandb sync {run_dir / 'wandb'}/offline-run-*`."
        )

    try:
        run = _init(run_dir, cfg, "offline", name, group, job_type, quiet)
        return WandbTracker(run, "offline", run_dir)
    except Exception as e:
        _safe_teardown()
        _note(f"offline tracking failed too ({_describe(e)}); tracking off for this run.")
        return NullTracker(run_dir)


def _safe_teardown() -> None:
    try:
        import wandb

        if wandb.run is not None:
            wandb.run.finish(exit_code=1)
    except Exception:
        pass


# ----------------------------------------------------------------------------- sweep params


def flatten_params(params: dict, prefix: str = "") -> dict[str, Any]:
    """``{"attack": {"lang": "ja"}, "seed": 1}`` -> ``{"attack.lang": "ja", "seed": 1}``.

    Dict values are merged leaf by leaf (a sweep value ``attack: {lang: ja, data: harmful}``
    sets those two fields and keeps the rest of ``attack``).
    """
    out: dict[str, Any] = {}
    for k, v in params.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten_params(v, key))
        else:
            out[key] = v
    return out


def read_sweep_params(path: Path | str) -> dict[str, Any]:
    """Read a W&B sweep parameter file (``{param: {value: v}}``, YAML or JSON) into dotted overrides."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except ValueError:
        import yaml

        data = yaml.safe_load(text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of {{param: {{value: v}}}}")
    params: dict[str, Any] = {}
    for k, v in data.items():
        if str(k).startswith("_wandb") or k == "wandb_version":
            continue
        if isinstance(v, dict) and "value" in v:
            params[str(k)] = v["value"]
        else:  # tolerate a plain {param: v} file
            params[str(k)] = v
    return flatten_params(params)


def sweep_overrides_from_env() -> dict[str, object]:
    """Dotted recipe overrides from the file named by ``WANDB_SWEEP_PARAM_PATH`` ({} if unset).

    Used by the config loader so the same code path serves ``wandb agent`` (which writes that
    file) and ``lab sweep`` (which writes it too, offline).
    """
    path = os.environ.get("WANDB_SWEEP_PARAM_PATH")
    if not path:
        return {}
    return read_sweep_params(path)


# ----------------------------------------------------------------------------- read-back


def _iter_wandb_records(path: Path):
    """Yield raw record payloads of a ``.wandb`` transaction log (leveldb log format)."""
    import struct
    import zlib

    block, header_len = 32768, 7
    data = Path(path).read_bytes()
    if len(data) < header_len or data[:4] != b":W&B":
        raise ValueError(f"{path}: not a .wandb file")
    crcs = [0] + [zlib.crc32(bytes([t])) & 0xFFFFFFFF for t in range(1, 5)]
    i, pending = header_len, b""
    while i + header_len <= len(data):
        left = block - (i % block)
        if left < header_len:
            i += left
            continue
        checksum, length, rtype = struct.unpack("<IHB", data[i : i + header_len])
        i += header_len
        chunk = data[i : i + length]
        i += length
        if rtype == 0 and length == 0:
            continue  # zero padding at the end of a block
        if rtype not in (1, 2, 3, 4) or len(chunk) != length:
            break  # truncated (run still writing / killed)
        if zlib.crc32(chunk, crcs[rtype]) & 0xFFFFFFFF != checksum:
            break
        if rtype == 1:
            yield chunk
        elif rtype == 2:
            pending = chunk
        elif rtype == 3:
            pending += chunk
        else:
            yield pending + chunk
            pending = b""


def read_offline_run(path: Path) -> dict[str, Any]:
    """Read back an offline run: ``{"config", "history", "summary", "artifacts", "files"}``.

    ``path`` is a ``.wandb`` file, an ``offline-run-*`` directory, or a run dir containing
    ``wandb/``.  Uses wandb's own protobuf ``Record`` definitions.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    p = Path(path)
    if p.is_dir():
        cands = (
            sorted(p.glob("*.wandb"))
            or sorted(p.glob("wandb/offline-run-*/*.wandb"))
            or sorted(p.glob("offline-run-*/*.wandb"))
            or sorted(p.glob("wandb/run-*/*.wandb"))
            or sorted(p.glob("run-*/*.wandb"))
        )
        if not cands:
            raise FileNotFoundError(f"no .wandb file under {p}")
        p = cands[-1]

    def val(s: str) -> Any:
        try:
            return json.loads(s)
        except ValueError:
            return s

    out: dict[str, Any] = {"config": {}, "history": [], "summary": {}, "artifacts": [], "files": []}

    def put(target: dict, item) -> None:
        value = val(item.value_json)
        if item.nested_key:  # nested values (tables, images, config sections) come as key paths
            cur = target
            for part in item.nested_key[:-1]:
                cur = cur.setdefault(part, {})
            cur[item.nested_key[-1]] = value
        else:
            target[item.key] = value

    for raw in _iter_wandb_records(p):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "config":
            for item in rec.config.update:
                put(out["config"], item)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in rec.history.item:
                put(row, item)
            out["history"].append(row)
        elif kind == "summary":
            for item in rec.summary.update:
                put(out["summary"], item)
        elif kind == "artifact":
            out["artifacts"].append({"name": rec.artifact.name, "type": rec.artifact.type})
        elif kind == "files":
            out["files"].extend(f.path for f in rec.files.files)
        elif kind == "run":
            out["run_id"] = rec.run.run_id
            out["name"] = rec.run.display_name
            out["group"] = rec.run.run_group
            out["job_type"] = rec.run.job_type
            for item in rec.run.config.update:
                put(out["config"], item)
    return out
