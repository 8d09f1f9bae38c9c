"""Sweep parameters: the file ``WANDB_SWEEP_PARAM_PATH`` names -> dotted recipe overrides.

``wandb agent`` writes that file for each run, and ``lab sweep`` writes the same format offline
(``{param: {value: v}}`` YAML), so ``lab run`` reads a sweep cell's parameters one way.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lab.errors import LabError

__all__ = ["flatten_params", "read_sweep_params", "sweep_overrides_from_env"]


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
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise LabError(f"{path} (WANDB_SWEEP_PARAM_PATH): cannot read the sweep parameters ({e.strerror})") from None
    try:
        data = json.loads(text)
    except ValueError:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise LabError(f"{path} (WANDB_SWEEP_PARAM_PATH): invalid YAML ({str(e)[:200]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LabError(f"{path} (WANDB_SWEEP_PARAM_PATH): expected a mapping of {{param: {{value: v}}}}, "
                       f"got {type(data).__name__}")
    params: dict[str, Any] = {}
    for k, v in data.items():
        if str(k).startswith("_wandb") or k == "wandb_version":
            continue
        params[str(k)] = v["value"] if isinstance(v, dict) and "value" in v else v  # also a plain {param: v}
    return flatten_params(params)


def sweep_overrides_from_env() -> dict[str, object]:
    """Dotted recipe overrides from the file named by ``WANDB_SWEEP_PARAM_PATH`` ({} if unset)."""
    path = os.environ.get("WANDB_SWEEP_PARAM_PATH")
    if not path:
        return {}
    return read_sweep_params(path)
