"""Shared pieces of the defenses: side batches in the trainer's format, LoRA layer lookup, data sets.

Side batches (Lisa's alignment batches, Booster's harmful batches, ...) are tokenized with
`lab.attribution.scores.build_calibration`: right-padded {input_ids, attention_mask, labels} with labels
-100 except on the assistant's response (the chat template's end-of-turn tokens included) — the same
layout TRL's SFTTrainer hands `compute_loss`, so one loss function serves both.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from lab.data import LANGS, SPLITS_DIR, read_jsonl
from lab.errors import LabError


def records(path: str | Path, n: int | None = None) -> list[dict]:
    """{prompt, response} dicts of a JSONL file (first n)."""
    recs = read_jsonl(path)
    for i, r in enumerate(recs):
        if not isinstance(r.get("prompt"), str) or not isinstance(r.get("response"), str):
            raise LabError(f"{path}: line {i + 1} needs string 'prompt' and 'response'")
    return recs[:n] if n else recs


def split_records(kind: str, lang: str, n: int | None = None) -> list[dict]:
    """datasets/splits/<kind>-<lang>.jsonl (kind: attack, control, safety, utility)."""
    if lang not in LANGS:
        raise LabError(f"unknown language {lang!r} (known: {', '.join(LANGS)})")
    return records(SPLITS_DIR / f"{kind}-{lang}.jsonl", n)


def safety_records(langs: Iterable[str], k: int) -> list[dict]:
    """k refusal examples (harmful prompt -> refusal) per language from datasets/splits/safety-<lang>.jsonl."""
    out = []
    for lang in langs:
        recs = split_records("safety", lang)
        if k > len(recs):
            raise LabError(f"safety data: k={k} refusal examples per language requested, safety-{lang}.jsonl has {len(recs)}")
        out += recs[:k]
    return out


class SideBatches:
    """An endless, seeded stream of batches from a record list, in the trainer's input layout."""

    def __init__(self, tok, recs: list[dict], batch_size: int, seed: int = 0, max_length: int = 256):
        from lab.attribution.scores import build_calibration

        if not recs:
            raise LabError("side batches: no records")
        self.rng = random.Random(seed)
        self.recs, self.tok, self.bs, self.max_length = list(recs), tok, batch_size, max_length
        self._build = build_calibration
        self._queue: list[dict] = []

    def next(self, device=None) -> dict:
        if not self._queue:
            order = self.recs[:]
            self.rng.shuffle(order)
            self._queue = self._build(self.tok, order, batch_size=self.bs, max_length=self.max_length)
        b = self._queue.pop(0)
        return {k: v.to(device) if device is not None else v for k, v in b.items()
                if k in ("input_ids", "attention_mask", "labels")}


def token_logps(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-prob of each label token, (B, T-1), and the mask of response positions (B, T-1)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    logits = out.logits[:, :-1].float()
    tgt = batch["labels"][:, 1:]
    mask = tgt != -100
    lp = torch.log_softmax(logits, -1).gather(-1, tgt.clamp_min(0)[..., None]).squeeze(-1)
    return lp * mask, mask


def ce_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """Token-mean cross-entropy on the response tokens (what SFTTrainer minimizes)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    logits = out.logits[:, :-1].float()
    tgt = batch["labels"][:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100)


def lora_pairs(model: nn.Module, adapter: str = "default") -> dict[str, tuple[nn.Module, nn.Parameter, nn.Parameter]]:
    """canonical base-weight name -> (peft LoRA layer, lora_A weight (r x in), lora_B weight (out x r))."""
    from lab.attribution.interventions import canonical_name

    out = {}
    for n, mod in model.named_modules():
        if hasattr(mod, "base_layer") and hasattr(mod, "lora_A") and adapter in getattr(mod, "lora_A", {}):
            out[canonical_name(n + ".base_layer.weight")] = (mod, mod.lora_A[adapter].weight, mod.lora_B[adapter].weight)
    if not out:
        raise LabError("no LoRA layers found: this defense needs the fine-tuned peft model (finetune with merge=False)")
    return out


def linear_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """canonical name -> weight of every nn.Linear inside the transformer blocks (not lm_head)."""
    from lab.attribution.interventions import canonical_name
    from lab.attribution.scores import layer_index

    out = {}
    for n, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and "lora_" not in n:
            name = canonical_name(n + ".weight")
            if layer_index(name) is not None:
                out[name] = mod.weight
    return out
