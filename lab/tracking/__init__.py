"""Weights & Biases tracking for lab runs and sweep cells (offline-first).

The runner uses a handful of calls::

    tracker = start_tracking(run_dir, config, mode="auto", name=..., group=..., job_type="run")
    tracker.log_metrics(metrics)            # the metrics.json layout
    tracker.log_table("transfer", columns, rows)
    tracker.log_image("transfer_heatmap", run_dir / "transfer.png")
    tracker.log_artifact(run_dir / "adapter", name="adapter", type="model")
    tracker.finish()

Modes: ``auto`` (online when an API key is available -- ``WANDB_API_KEY`` or a ``wandb login``
entry in ~/.netrc -- else offline), ``online``, ``offline``, ``none`` (a :class:`NullTracker` that
writes nothing).  Offline runs are written under ``run_dir/wandb/offline-run-*`` and can be
uploaded later with ``wandb sync run_dir/wandb/offline-run-*``; :func:`read_offline_run` reads
one back with wandb's own reader.  A W&B problem never raises out of this package: an online run
falls back to offline, a failing offline run to no tracking, with one note on stderr.  The API
key is never printed or logged.

Modules: :mod:`.auth` (credentials, mode, redaction), :mod:`.run` (the W&B run),
:mod:`.readback` (offline read-back), :mod:`.sweep_params` (``WANDB_SWEEP_PARAM_PATH`` -> overrides).

Knobs (environment): ``WANDB_PROJECT`` (default ``lab``), ``WANDB_ENTITY``,
``LAB_WANDB_INIT_TIMEOUT`` (seconds, default 30), ``LAB_WANDB_FINISH_TIMEOUT`` (seconds to wait
for uploads at the end of an online run, default 120).
"""
from lab.tracking.auth import MODES, redact, resolve_mode, server_reachable
from lab.tracking.readback import read_offline_run
from lab.tracking.run import NullTracker, Tracker, WandbTracker, flatten_metrics, start_tracking
from lab.tracking.sweep_params import flatten_params, read_sweep_params, sweep_overrides_from_env

__all__ = [
    "Tracker", "NullTracker", "WandbTracker", "start_tracking", "resolve_mode", "server_reachable", "redact",
    "flatten_metrics", "sweep_overrides_from_env", "read_sweep_params", "flatten_params", "read_offline_run",
    "MODES",
]
