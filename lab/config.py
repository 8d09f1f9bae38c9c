"""Recipes: YAML (safe-loaded) validated by pydantic; errors name the file and the key."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lab import REPO_ROOT
from lab.data import LANGS
from lab.errors import LabError
from lab.train import FineTuneConfig

Lang = Literal["zh", "ja", "en", "it", "hi"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvalConfig(_Strict):
    data: str = Field("datasets/splits/eval.jsonl", description="held-out evaluation prompts (JSONL)")
    langs: list[Lang] = Field(default_factory=lambda: list(LANGS), description="evaluation languages")
    limit: int | None = Field(None, description="keep the first N parallel prompts per kind (harmful/benign)")
    max_new_tokens: int | None = Field(None, description="None = per language, from the tokenization of the lab's targets")
    batch_size: int = 64
    detector: Literal["tiered", "dictionary-000", "gcg", "substring"] = "tiered"
    margin: bool = Field(True, description="also compute the log-prob refusal margin")
    canary: bool = Field(True, description="stop before attacking if the starting model fails the canary refusals")
    canary_min: float = 0.5


class FineTune(FineTuneConfig):
    name: str | None = Field(None, description="model state name; default attack-<lang> / control-<lang>")
    data: Literal["harmful", "benign"] = "harmful"
    lang: Lang = "en"
    path: str | None = Field(None, description="explicit JSONL (prompt, response); default datasets/splits/{attack,control}-<lang>.jsonl")
    n_examples: int = 100

    @property
    def state(self) -> str:
        return self.name or f"{'attack' if self.data == 'harmful' else 'control'}-{self.lang}"

    @property
    def dataset_path(self) -> str:
        return self.path or f"datasets/splits/{'attack' if self.data == 'harmful' else 'control'}-{self.lang}.jsonl"


class Recipe(_Strict):
    name: str
    seed: int = 0
    seeds: list[int] | None = Field(None, description="repeat every fine-tune for each seed (states get @s<seed>)")
    model: str = "zoo:organism"
    trust_remote_code: bool = False
    tracking: Literal["auto", "online", "offline", "none"] = "auto"
    eval: EvalConfig = Field(default_factory=EvalConfig)
    attack: FineTune | None = Field(None, description="a single fine-tune (sweeps address attack.lang, attack.lr, ...)")
    finetunes: list[FineTune] = Field(default_factory=list)
    defaults: dict = Field(default_factory=dict, description="values applied to every fine-tune unless it sets them")

    @model_validator(mode="after")
    def _names_unique(self):
        names = [f.state for f in self.all_finetunes()]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"fine-tune names must be unique, repeated: {sorted(dup)}")
        return self

    def all_finetunes(self) -> list[FineTune]:
        fts = ([self.attack] if self.attack else []) + list(self.finetunes)
        return fts


def resolve_path(p: str) -> Path:
    """Relative paths resolve against the working directory, then the lab's checkout."""
    path = Path(p).expanduser()
    if path.is_absolute() or path.exists():
        return path
    alt = Path(REPO_ROOT) / p
    return alt if alt.exists() else path


def _set_dotted(d: dict, key: str, value) -> None:
    parts = key.split(".")
    cur = d
    for i, part in enumerate(parts[:-1]):
        nxt = cur.get(part) if isinstance(cur, dict) else None
        if isinstance(cur, list) and part.isdigit():
            cur = cur[int(part)]
            continue
        if nxt is None:
            cur[part] = nxt = {}
        cur = nxt
    last = parts[-1]
    if isinstance(cur, list) and last.isdigit():
        cur[int(last)] = value
    else:
        cur[last] = value


def parse_override(s: str) -> tuple[str, object]:
    if "=" not in s:
        raise LabError(f"--set {s!r}: expected key=value (e.g. attack.lang=ja)")
    k, v = s.split("=", 1)
    return k.strip(), yaml.safe_load(v)


def _valid_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    cur = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        f = cur.model_fields.get(part)
        if f is None:
            return []
        ann = f.annotation
        for cand in getattr(ann, "__args__", ()) + (ann,):
            inner = getattr(cand, "__args__", (cand,))
            for c in inner + (cand,):
                if isinstance(c, type) and issubclass(c, BaseModel):
                    cur = c
                    break
    return sorted(cur.model_fields)


def experiment_of(path: str | Path) -> str:
    """Which experiment a recipe file describes: its `experiment:` key, else inferred from its keys.

    spine (default): evaluate -> fine-tune -> evaluate; safety-localization; censorship-residue.
    """
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return "spine"  # load_recipe reports the problem with file and line
    if not isinstance(raw, dict):
        return "spine"
    for key in ("experiment", "kind"):
        if isinstance(raw.get(key), str):
            return raw[key]
    if "probe" in raw:
        return "censorship-residue"
    if "interventions" in raw or "localization" in raw or raw.get("name") == "safety-localization":
        return "safety-localization"
    return "spine"


def load_recipe(path: str | Path, overrides: dict | None = None) -> Recipe:
    """Load and validate a recipe; apply dotted overrides (`--set`, sweep parameters) before validating."""
    path = Path(path)
    if not path.is_file():
        raise LabError(f"{path}: recipe file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise LabError(f"{path}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise LabError(f"{path}: expected a mapping of recipe keys at the top level")
    raw.setdefault("name", path.stem)
    for k, v in (overrides or {}).items():
        _set_dotted(raw, k, v)
    defaults = raw.get("defaults") or {}
    for ft in ([raw["attack"]] if isinstance(raw.get("attack"), dict) else []) + [
            f for f in raw.get("finetunes") or [] if isinstance(f, dict)]:
        for k, v in defaults.items():
            ft.setdefault(k, v)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            valid = _valid_keys(Recipe, tuple(err["loc"]))
            raise LabError(f"{path}: unknown key '{loc}' (valid keys here: {', '.join(valid)})") from None
        raise LabError(f"{path}: key '{loc}': {err['msg']}" + (f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else "")) from None


def dump_recipe(r: Recipe) -> str:
    return yaml.safe_dump(r.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
