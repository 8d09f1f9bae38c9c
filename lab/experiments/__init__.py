"""Experiments: one per recipe `kind:`, all run under the contract in lab.experiments.base.

    from lab.experiments import load_recipe, run
    metrics = run(load_recipe("recipes/quickstart.yaml", {"attack.lr": 1e-3}), out_dir=None)
"""
from __future__ import annotations

from pathlib import Path

from lab.config import apply_defaults, read_recipe_dict, short, validate
from lab.errors import LabError
from lab.experiments.base import Experiment, default_out, run  # noqa: F401
from lab.experiments.censorship import CensorshipExperiment
from lab.experiments.localization import LocalizationExperiment
from lab.experiments.transfer import TransferExperiment

KINDS: dict[str, type[Experiment]] = {e.kind: e for e in (TransferExperiment, LocalizationExperiment,
                                                           CensorshipExperiment)}


def register(cls: type[Experiment]) -> type[Experiment]:
    if cls.kind in KINDS and KINDS[cls.kind] is not cls:
        raise ValueError(f"recipe kind '{cls.kind}' is already registered by {KINDS[cls.kind].__name__}")
    KINDS[cls.kind] = cls
    return cls


def _load_optional_kinds() -> None:
    try:  # the defense bench lives in its own module (issue 6); registered when present
        from lab.experiments.defense import DefenseExperiment
    except ModuleNotFoundError as e:
        if e.name != "lab.experiments.defense":
            raise
        return
    register(DefenseExperiment)


_load_optional_kinds()


def recipe_from_dict(raw: dict, where: str):
    kind = raw.get("kind")
    if kind is None:
        raise LabError(f"{where}: missing key 'kind' (one of: {', '.join(KINDS)})")
    if kind not in KINDS:
        raise LabError(f"{where}: key 'kind': unknown kind {short(kind)} (one of: {', '.join(KINDS)})")
    apply_defaults(raw, where)
    return validate(KINDS[kind].Recipe, raw, where)


def load_recipe(path: str | Path, overrides: dict | None = None):
    """Read, merge (include, --set, defaults) and validate a recipe of any kind."""
    return recipe_from_dict(read_recipe_dict(path, overrides), str(path))


def experiment_for(recipe, log=print) -> Experiment:
    return KINDS[recipe.kind](recipe, log=log)
