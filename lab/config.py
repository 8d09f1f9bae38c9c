"""Recipes: one config layer for every recipe kind.

A recipe is YAML (safe-loaded, size- and alias-bounded) that declares its `kind:`. Loading goes:
read -> `include:` (a base file, merged under this one) -> `--set` dotted overrides (list indices
included) -> `defaults:` applied to every fine-tune -> pydantic validation against the kind's schema.
Every failure is a LabError naming the file, key (and line where YAML knows it) and what was expected.

The shared pieces live here: `Strict` (unknown keys are errors), `FineTuneConfig` (one fine-tune's
hyperparameters, with ranges), `FineTune` (+ its data), `EvalConfig`, `RecipeBase` (name, seed,
model reference, tracking, eval). Each kind extends `RecipeBase` in its experiment module.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lab import REPO_ROOT
from lab.data import LANGS
from lab.errors import LabError

Lang = Literal["zh", "ja", "en", "it", "hi"]
MAX_RECIPE_BYTES = 1_000_000
MAX_YAML_ALIASES = 200
MAX_INCLUDE_DEPTH = 4


def short(value: Any, n: int = 120) -> str:
    """repr() of a value, cut to n characters: error messages never echo a whole input."""
    r = repr(value)
    return r if len(r) <= n else r[: n - 15] + f"... ({len(r)} chars)"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FineTuneConfig(Strict):
    """One fine-tune's hyperparameters (LoRA via peft, or full), trained with TRL's SFTTrainer."""
    method: Literal["lora", "full"] = "lora"
    lr: float = Field(3e-3, gt=0, description="learning rate")
    epochs: int = Field(5, ge=1, le=10_000)
    batch_size: int = Field(8, ge=1, le=65_536)
    seed: int = 0
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"
    merge: bool = True
    max_length: int = Field(256, ge=8, description="tokens per training example (prompt + response)")
    gradient_checkpointing: bool = Field(True, description="on GPU only (CPU runs never checkpoint)")
    loss_head: Literal["model", "trl"] = Field(
        "model", description="'model': the model's own cross-entropy over the completion tokens (default; 1.1x a "
        "minimal loop); 'trl': TRL's chunked log-prob head (2.1x; the lab's default before issue 13)")


class FineTune(FineTuneConfig):
    """A fine-tune in a recipe: hyperparameters plus the data it trains on."""
    name: str | None = Field(None, description="model state name; default attack-<lang> / control-<lang>")
    data: Literal["harmful", "benign"] = "harmful"
    lang: Lang = "en"
    path: str | None = Field(None, description="a JSONL of (prompt, response), or a public set (beavertails:PATH, "
                             "hex-phi:PATH, advbench, ...; see lab.public_data.finetune); default "
                             "datasets/splits/{attack,control}-<lang>.jsonl")
    n_examples: int = Field(100, ge=1)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v):
        if v is not None:
            check_name(v, "name")
        return v

    @property
    def state(self) -> str:
        return self.name or f"{'attack' if self.data == 'harmful' else 'control'}-{self.lang}"

    @property
    def dataset_path(self) -> str:
        return self.path or f"datasets/splits/{'attack' if self.data == 'harmful' else 'control'}-{self.lang}.jsonl"

    def load_records(self, n: int | None = None) -> list:
        """The fine-tuning records: the lab's JSONL, or a public harmful set (lab.public_data.finetune)."""
        from lab.public_data.finetune import load_finetune_source

        spec = self.dataset_path
        spec = str(resolve_path(spec)) if spec.endswith(".jsonl") else spec
        return load_finetune_source(spec, self.n_examples if n is None else n, lang=self.lang, seed=self.seed)

    def train_config(self, **update) -> FineTuneConfig:
        return FineTuneConfig(**{**{k: getattr(self, k) for k in FineTuneConfig.model_fields}, **update})


DETECTORS = ("tiered", "dictionary-000", "gcg", "substring")


class EvalConfig(Strict):
    data: str = Field("datasets/splits/eval.jsonl", description="held-out prompts: a JSONL path, a public benchmark "
                      "(multijail, xsafety, polyrefuse, advbench, mt-bench), hub:<dataset id>, or several joined by '+'")
    langs: list[Lang] = Field(default_factory=lambda: list(LANGS), min_length=1, description="evaluation languages")
    limit: int | None = Field(None, ge=1, description="keep the first N parallel prompts per kind (harmful/benign)")
    max_new_tokens: int | None = Field(None, ge=1, le=32_768,
                                       description="None = per language, from the tokenization of the lab's targets")
    batch_size: int | None = Field(None, ge=1, le=65_536, description="None: 256 rows (greedy), 64 (sampling)")
    detector: str | list[str] = Field("tiered", description="a detector method, or a list (the first gives the rates)")
    margin: bool = Field(True, description="also compute the log-prob refusal margin")
    canary: bool = Field(True, description="stop before attacking if the starting model fails the canary refusals")
    canary_min: float = Field(0.5, ge=0, le=1)
    system: str | None = Field(None, description="optional system prompt (folded into the user turn for templates without one)")
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0, le=10)
    top_p: float | None = Field(None, gt=0, le=1)
    sample_seed: int = Field(0, description="seed of the sampling stream (with do_sample)")
    repetition_stop: Literal["auto"] | None | tuple[int, int] = Field(
        "auto", description="stop an answer whose last n tokens occurred k times: [n, k]; auto = off for the "
                            "organism, [8, 3] for other models; null = never")
    cache: bool = Field(True, description="reuse the starting model's evaluation across runs (keyed by content; LAB_CACHE)")

    @field_validator("langs")
    @classmethod
    def _unique_langs(cls, v):
        if len(set(v)) != len(v):
            raise ValueError(f"languages repeat: {v}")
        return v

    @field_validator("detector")
    @classmethod
    def _known_detector(cls, v):
        for m in [v] if isinstance(v, str) else v:
            if m not in DETECTORS and not m.startswith("judge:"):
                raise ValueError(f"unknown detector {m!r} (expected one of {', '.join(DETECTORS)} or judge:<model>)")
        if not isinstance(v, str) and not v:
            raise ValueError("detector list is empty")
        return v

    @property
    def detectors(self) -> list[str]:
        return [self.detector] if isinstance(self.detector, str) else list(self.detector)


def check_name(v: str, key: str) -> str:
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}", v) or ".." in v:
        raise ValueError(f"{key} {short(v)} must be 1-100 letters, digits, '.', '_', '-', '@', '+' "
                         "(it names a directory; no '/' or '..')")
    return v


class Quantization(Strict):
    """QLoRA-style loading (CUDA + bitsandbytes only; a clear error on CPU): a BitsAndBytesConfig."""
    load_in_4bit: bool = True
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    bnb_4bit_compute_dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    bnb_4bit_use_double_quant: bool = True


class RecipeBase(Strict):
    """Every kind's recipe: what it runs on and how it is tracked and evaluated."""
    kind: str
    name: str
    seed: int = 0
    model: str = Field("zoo:organism", description="hub id, local path, *.gguf or zoo:<name>")
    trust_remote_code: bool = False
    dtype: Literal["auto", "fp32", "bf16", "fp16"] | None = Field(None, description="None: fp32 on CPU, bf16 on GPU")
    quantization: Quantization | None = Field(None, description="load the model in 4 bit (QLoRA; GPU only)")
    tracking: Literal["auto", "online", "offline", "none"] = "auto"
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v):
        return check_name(v, "name")

    def load_model(self, spec: str | None = None):
        """(model, tokenizer) of `spec` (default: the recipe's model) with the recipe's loading options."""
        from lab.models import load_model

        q = self.quantization.model_dump() if self.quantization else None
        return load_model(spec or self.model, trust_remote_code=self.trust_remote_code, quantization=q, dtype=self.dtype)

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:10]


def resolve_path(p: str) -> Path:
    """Relative paths resolve against the working directory, then the lab's checkout."""
    path = Path(p).expanduser()
    if path.is_absolute() or path.exists():
        return path
    alt = Path(REPO_ROOT) / p
    return alt if alt.exists() else path


# ---------------------------------------------------------------------------------------- YAML
class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses more than MAX_YAML_ALIASES alias references (YAML 'billion laughs')."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases = getattr(self, "_aliases", 0) + 1
            if self._aliases > MAX_YAML_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_YAML_ALIASES} YAML aliases (*refs); refusing to expand")
        return super().compose_node(parent, index)


def safe_yaml(text: str, where: str):
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise LabError(f"{where}{line}: invalid YAML ({short(str(getattr(e, 'problem', None) or e), 200)})") from None


def read_yaml_file(path: Path, what: str = "recipe") -> Any:
    if not path.is_file():
        raise LabError(f"{path}: {what} file not found" if not path.exists() else f"{path}: is not a file")
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise LabError(f"{path}: {what} is {size} bytes (limit {MAX_RECIPE_BYTES})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LabError(f"{path}: not UTF-8 text ({e.reason})") from None
    return safe_yaml(text, str(path))


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def read_recipe_dict(path: str | Path, overrides: dict | None = None, _depth: int = 0) -> dict:
    """The recipe as a plain dict: YAML + include + overrides + defaults, not yet validated."""
    path = Path(path)
    raw = read_yaml_file(path)
    if raw is None:
        raise LabError(f"{path}: the recipe is empty (expected at least `kind:`)")
    if not isinstance(raw, dict):
        raise LabError(f"{path}: expected a mapping of recipe keys at the top level, got {type(raw).__name__}")
    inc = raw.pop("include", None)
    if inc is not None:
        if not isinstance(inc, str):
            raise LabError(f"{path}: key 'include': expected a recipe file path, got {short(inc)}")
        if _depth >= MAX_INCLUDE_DEPTH:
            raise LabError(f"{path}: include nested deeper than {MAX_INCLUDE_DEPTH}")
        base_path = (path.parent / inc) if not Path(inc).is_absolute() else Path(inc)
        raw = _merge(read_recipe_dict(base_path, None, _depth + 1), raw)
    raw.setdefault("name", path.stem)
    for k, v in (overrides or {}).items():
        set_dotted(raw, k, v, where=f"--set {k}")
    return raw


def apply_defaults(raw: dict, where: str, keys: tuple[str, ...] = ("attack", "finetunes")) -> None:
    """`defaults:` values go into every fine-tune (attack, finetunes[*]) that does not set them."""
    defaults = raw.get("defaults")
    if defaults is None:
        return
    if not isinstance(defaults, dict):
        raise LabError(f"{where}: key 'defaults': expected a mapping of fine-tune keys, got {short(defaults)}")
    targets = []
    for key in keys:
        v = raw.get(key)
        targets += [v] if isinstance(v, dict) else [f for f in v if isinstance(f, dict)] if isinstance(v, list) else []
    for ft in targets:
        for k, v in defaults.items():
            ft.setdefault(k, copy.deepcopy(v))


def set_dotted(d: dict, key: str, value, where: str) -> None:
    """d['a']['b'][0]['c'] = value for key 'a.b.0.c'; missing mappings are created; errors name the key."""
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise LabError(f"{where}: malformed key {short(key)} (expected a dotted path such as attack.lr)")
    cur: Any = d
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        here = ".".join(parts[: i + 1])
        if isinstance(cur, list):
            if not part.isdigit():
                raise LabError(f"{where}: '{'.'.join(parts[:i]) or key}' is a list; expected an index, got {part!r}")
            idx = int(part)
            if idx >= len(cur):
                raise LabError(f"{where}: index {idx} out of range ('{'.'.join(parts[:i])}' has {len(cur)} entries)")
            if last:
                cur[idx] = value
                return
            cur = cur[idx]
        elif isinstance(cur, dict):
            if last:
                cur[part] = value
                return
            if cur.get(part) is None:
                cur[part] = {}
            cur = cur[part]
        else:
            raise LabError(f"{where}: cannot set '{key}': '{'.'.join(parts[:i])}' is {short(cur)}, not a mapping or list")
        del here


def parse_override(s: str) -> tuple[str, object]:
    if "=" not in s:
        raise LabError(f"--set {short(s)}: expected key=value (e.g. attack.lang=ja)")
    k, v = s.split("=", 1)
    return k.strip(), safe_yaml(v, f"--set {k.strip()}")


def _valid_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    cur = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        f = cur.model_fields.get(part)
        if f is None:
            return []
        ann = f.annotation
        found = None
        stack = [ann]
        while stack and found is None:
            c = stack.pop()
            if isinstance(c, type) and issubclass(c, BaseModel):
                found = c
            stack += list(getattr(c, "__args__", ()))
        if found is None:
            return []
        cur = found
    return sorted(cur.model_fields)


def validate(schema: type[BaseModel], raw: dict, where: str):
    """schema.model_validate(raw) with the first error as one LabError naming the key."""
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            valid = _valid_keys(schema, tuple(err["loc"]))
            raise LabError(f"{where}: unknown key '{loc}' (valid keys here: {', '.join(valid)})") from None
        got = f" (got {short(err['input'])})" if "input" in err and not isinstance(err["input"], dict) else ""
        raise LabError(f"{where}: key '{loc or '(recipe)'}': {short(err['msg'], 300)}{got}") from None


def dump_recipe(r: BaseModel) -> str:
    return yaml.safe_dump(r.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def config_diff(a, b, prefix: str = "") -> list[str]:
    """Dotted keys (list indices included) whose values differ between two resolved configs."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = []
        for k in sorted(set(a) | set(b)):
            keys += config_diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return keys
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        keys = []
        for i, (x, y) in enumerate(zip(a, b)):
            keys += config_diff(x, y, f"{prefix}{i}.")
        return keys
    return [] if a == b else [prefix.rstrip(".")]
