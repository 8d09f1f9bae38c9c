"""Which weights are scored, and how parameter names map to (layer, module kind) and passes.

Scored parameters are the `weight` of every `nn.Linear` in the model (attention and MLP, whatever
their shapes: GQA k/v projections narrower than q are just matrices of their own shape), except the
output head (`lm_head`) unless `include_lm_head=True`; input embeddings only with
`include_embeddings=True`. Tied weights are scored once, under the first name met. Keys are
parameter names as in `model.named_parameters()` ("model.layers.0.self_attn.q_proj.weight").
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import nn

from lab.errors import LabError

_LAYER_RE = re.compile(r"\.(\d+)\.")
BATCH_KEYS = ("input_ids", "attention_mask", "labels")


def scored_parameters(model: nn.Module, *, include_embeddings: bool = False,
                      include_lm_head: bool = False) -> dict[str, nn.Parameter]:
    """Name -> weight Parameter of every nn.Linear (and optionally embeddings / output head)."""
    return {name: mod.weight for name, mod in scored_modules(model, include_embeddings, include_lm_head).items()}


def scored_modules(model: nn.Module, include_embeddings: bool = False,
                   include_lm_head: bool = False) -> dict[str, nn.Module]:
    """Name of the weight -> the nn.Linear / nn.Embedding that owns it (see the module docstring)."""
    get_out = getattr(model, "get_output_embeddings", None)
    out_emb = get_out() if callable(get_out) else None
    seen: set[int] = set()
    res: dict[str, nn.Module] = {}
    for mname, mod in model.named_modules():
        if "lora_" in mname:  # peft adapters are not part of the model being attributed
            continue
        if isinstance(mod, nn.Linear):
            if mod is out_emb and not include_lm_head:
                continue
        elif isinstance(mod, nn.Embedding):
            if not include_embeddings:
                continue
        else:
            continue
        w = mod.weight
        if id(w) in seen:
            continue
        seen.add(id(w))
        res[f"{mname}.weight" if mname else "weight"] = mod
    if not res:
        raise LabError("model has no nn.Linear layers to score")
    return res


def layer_index(name: str) -> int | None:
    """Index of the transformer block a parameter belongs to (first `.N.` in its name), else None."""
    m = _LAYER_RE.search("." + name)
    return int(m.group(1)) if m else None


def module_kind(name: str) -> str:
    """'self_attn.q_proj' for 'model.layers.3.self_attn.q_proj.weight'; the full name when not in a block."""
    n = name[:-len(".weight")] if name.endswith(".weight") else name
    m = _LAYER_RE.search("." + n + ".")
    if not m:
        return n
    return ("." + n + ".")[m.end():].strip(".") or n


def layer_groups(names: Sequence[str], layers_per_pass: int | None) -> list[list[str]]:
    """Split parameter names into passes of `layers_per_pass` consecutive blocks (None: one pass).

    Parameters outside numbered blocks (lm_head, embeddings) join the first pass.
    """
    names = list(names)
    if not layers_per_pass:
        return [names]
    if layers_per_pass < 1:
        raise LabError(f"layers_per_pass must be >= 1, got {layers_per_pass}")
    idx = sorted({i for i in (layer_index(n) for n in names) if i is not None})
    chunks = [idx[i:i + layers_per_pass] for i in range(0, len(idx), layers_per_pass)] or [[]]
    groups: list[list[str]] = [[] for _ in chunks]
    where = {layer: g for g, chunk in enumerate(chunks) for layer in chunk}
    for n in names:
        li = layer_index(n)
        groups[where[li] if li is not None else 0].append(n)
    return [g for g in groups if g]


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def to_device(batch: dict, dev: torch.device) -> dict:
    """The model inputs of a calibration batch on `dev` (weights such as `loss_weight` are read separately)."""
    return {k: v.to(dev) for k, v in batch.items() if k in BATCH_KEYS}


def input_of(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    for k in ("input", "x", "hidden_states"):
        if k in kwargs:
            return kwargs[k]
    raise LabError("cannot find the input of a linear layer in its forward call")
