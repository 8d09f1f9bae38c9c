"""Sweep files (W&B's sweep format) and the parameter combinations they describe (grid / random)."""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lab import REPO_ROOT
from lab.errors import LabError

__all__ = ["SweepSpec", "load_sweep", "combinations", "canon", "WANDB_TOP_KEYS"]

# W&B's sweep-config schema (additionalProperties: false); anything else draws a warning there.
WANDB_TOP_KEYS = {
    "apiVersion", "kind", "controller", "description", "program", "job", "image_uri", "entity",
    "project", "method", "command", "name", "run_cap", "metric", "metrics", "scheduler",
    "early_terminate", "parameters",
}
LAB_TOP_KEYS = {"sweep_seed"}  # lab-only; stripped before talking to W&B
PARAM_KEYS = {"value", "values", "probabilities", "distribution", "min", "max", "mu", "sigma", "q", "a", "b"}


def canon(obj: Any) -> str:
    """Canonical JSON: what cell ids and sweep hashes are computed from."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


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
            raise _err(path, f"parameters.{key}: expected a mapping like {{values: [...]}} or {{value: x}}, "
                       f"got {str(spec)[:100]!r}")
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
    cands = [p] if p.is_absolute() else [Path.cwd() / p, Path(REPO_ROOT) / p, sweep_path.parent / p]
    for c in cands:
        if c.is_file():
            return c.resolve()
    raise _err(sweep_path, f"program: recipe {program!r} not found (looked in {', '.join(str(c.parent) for c in cands)})")


def load_sweep(path: Path | str, seed: int | None = None) -> SweepSpec:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabError(f"{path}: sweep file not found") from None
    except IsADirectoryError:
        raise LabError(f"{path}: is a directory, not a sweep file") from None
    except yaml.YAMLError as e:
        raise LabError(f"{path}: invalid YAML: {str(e)[:300]}") from None
    if not isinstance(raw, dict):
        raise _err(path, "expected a mapping (a W&B sweep configuration)")
    unknown = set(raw) - WANDB_TOP_KEYS - LAB_TOP_KEYS
    if unknown:
        raise _err(path, f"unknown top-level key(s) {sorted(unknown)}; W&B sweep keys are {sorted(WANDB_TOP_KEYS)}"
                   f" (plus lab's optional sweep_seed)")
    method = raw.get("method")
    if method in ("bayes", "custom"):
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
        digest = canon({"method": method, "parameters": raw.get("parameters"), "run_cap": run_cap})
        seed = int(hashlib.sha256(digest.encode()).hexdigest()[:8], 16)
    name = str(raw.get("name") or path.stem)
    return SweepSpec(path=path, raw=raw, name=name, method=method, recipe=recipe, recipe_arg=program,
                     params=params, run_cap=run_cap, seed=int(seed))


# ----------------------------------------------------------------------------- sampling


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

    draws = {
        "int_uniform": lambda: rng.randint(int(lo), int(hi)),
        "uniform": lambda: rng.uniform(lo, hi),
        "q_uniform": lambda: quant(rng.uniform(lo, hi)),
        "log_uniform": lambda: math.exp(rng.uniform(lo, hi)),  # min/max are exponents (natural log)
        "log_uniform_values": lambda: math.exp(rng.uniform(math.log(lo), math.log(hi))),
        "q_log_uniform": lambda: quant(math.exp(rng.uniform(lo, hi))),
        "q_log_uniform_values": lambda: quant(math.exp(rng.uniform(math.log(lo), math.log(hi)))),
        "inv_log_uniform": lambda: math.exp(-rng.uniform(lo, hi)),
        "inv_log_uniform_values": lambda: 1.0 / math.exp(rng.uniform(math.log(1.0 / hi), math.log(1.0 / lo))),
        "normal": lambda: rng.gauss(mu, sigma),
        "q_normal": lambda: quant(rng.gauss(mu, sigma)),
        "log_normal": lambda: math.exp(rng.gauss(mu, sigma)),
        "q_log_normal": lambda: quant(math.exp(rng.gauss(mu, sigma))),
        "beta": lambda: rng.betavariate(spec.get("a", 1.0), spec.get("b", 1.0)),
        "q_beta": lambda: quant(rng.betavariate(spec.get("a", 1.0), spec.get("b", 1.0))),
    }
    if dist not in draws:
        raise _err(spec_path, f"parameters.{name}: distribution {dist!r} is not supported by the local executor")
    return draws[dist]()


def combinations(spec: SweepSpec) -> list[dict[str, Any]]:
    """The sweep's parameter sets, in a deterministic order (random: seeded, without repeats)."""
    names = list(spec.params)
    if spec.method == "grid":
        axes = [_grid_values(spec.path, n, spec.params[n]) for n in names]
        combos = [dict(zip(names, vals)) for vals in itertools.product(*axes)]
        return combos[: spec.run_cap] if spec.run_cap is not None else combos
    rng = random.Random(spec.seed)
    combos: list[dict[str, Any]] = []
    seen: set[str] = set()
    cap = spec.run_cap or 0
    for _ in range(100 * cap + 100):
        if len(combos) >= cap:
            break
        c = {n: _sample(rng, spec.path, n, spec.params[n]) for n in names}
        if canon(c) not in seen:
            seen.add(canon(c))
            combos.append(c)
    return combos
