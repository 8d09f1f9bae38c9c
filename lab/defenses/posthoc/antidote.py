"""Antidote (Huang et al., ICML 2025, "Antidote: Post-fine-tuning Safety Alignment for Large Language
Models against Harmful Fine-tuning"; code github:git-disl/Antidote, utils.prune_wanda_outlier and
train.py's antidote branch).

After the (possibly harmful) fine-tune, compute Wanda scores on *harmful* data and zero the
highest-scoring weights: for each pruned linear layer,

    S_ij = |W_ij| · ‖X_j‖₂          X = the layer's inputs over every token of the calibration sequences
    in each row i, the top `dense_ratio` fraction of S_i· (exactly cols − int(cols·(1 − dense_ratio))
    entries, the official rounding) are set to 0.

What is pruned (`on`): "lora" (default, as the official code with LoRA: find_layers keeps the modules
whose name contains "lora", i.e. the lora_A (r x in) and lora_B (out x r) factors, scored on their own
inputs — x for A, A·x for B — and pruned row by row), or "merged" (the official full-fine-tuning branch:
the q/k/v projections of the merged model). Defaults: dense_ratio 0.2 (the paper's scripts,
script/finetune/antidote_dense_ratio.sh; train.py's default is 0.1), calibration = harmful
prompt + harmful answer sequences, every token (the official code passes input_ids only); we drop pad
positions, which the official batch size of 1 never has. The official code's layer-by-layer
calibration pass (cached inputs per block) computes the same inputs as one full forward pass; we run
full forward passes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lab.errors import LabError


@dataclass
class AntidoteConfig:
    dense_ratio: float = 0.2   # fraction of each row to zero (official script default 0.2)
    on: str = "lora"           # "lora" (official, LoRA) | "merged" (official full-FT branch: q/k/v)
    batch_size: int = 8
    max_length: int = 256
    adapter: str = "default"


def _targets(model: nn.Module, cfg: AntidoteConfig) -> dict[str, nn.Linear]:
    out = {}
    for n, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        if cfg.on == "lora" and (f"lora_A.{cfg.adapter}" in n or f"lora_B.{cfg.adapter}" in n):
            out[n] = mod
        elif cfg.on == "merged" and "lora_" not in n and any(k in n for k in ("q_proj", "k_proj", "v_proj")):
            out[n] = mod
    if cfg.on not in ("lora", "merged"):
        raise LabError(f"Antidote: on must be 'lora' or 'merged', got {cfg.on!r}")
    if not out:
        raise LabError(f"Antidote (on={cfg.on}): no target layers found"
                       + (" — pass the peft model (finetune with merge=False)" if cfg.on == "lora" else ""))
    return out


@torch.no_grad()
def input_sq_norms(model: nn.Module, layers: dict[str, nn.Linear], batches) -> dict[str, torch.Tensor]:
    """Σ over non-pad tokens of x_j² for every target layer's input (the official scaler_row up to a
    constant factor, which the per-row ranking ignores)."""
    acc = {n: torch.zeros(m.in_features, dtype=torch.float32, device=m.weight.device) for n, m in layers.items()}
    state: dict = {}
    handles = []
    for n, m in layers.items():
        def hook(mod, args, n=n):
            x = args[0].float()
            keep = state["mask"]
            acc[n] += (x[keep] ** 2).sum(0)
        handles.append(m.register_forward_pre_hook(hook))
    try:
        was = model.training
        model.eval()
        for b in batches:
            state["mask"] = b["attention_mask"].bool()
            model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False)
        model.train(was)
    finally:
        for h in handles:
            h.remove()
    return acc


def wanda_row_mask(weight: torch.Tensor, sq_norm: torch.Tensor, dense_ratio: float) -> torch.Tensor:
    """Bool mask of the entries to zero: per row, the top entries of |W|·sqrt(Σx²), official count."""
    score = weight.detach().abs().float() * torch.sqrt(sq_norm.float())[None, :]
    cols = score.shape[1]
    keep = int(cols * (1 - dense_ratio))
    order = torch.sort(score, dim=-1, stable=True).indices       # ascending, as the official code
    mask = torch.ones_like(score, dtype=torch.bool)
    mask.scatter_(1, order[:, :keep], False)
    return mask


@torch.no_grad()
def antidote(model: nn.Module, tok, harmful_records: list[dict], cfg: AntidoteConfig | None = None) -> dict:
    """Prune in place; returns {"pruned": n entries, "layers": n layers}."""
    from lab.attribution.scores import build_calibration

    cfg = cfg or AntidoteConfig()
    if not 0 <= cfg.dense_ratio <= 1:
        raise LabError(f"Antidote: dense_ratio must be in [0, 1], got {cfg.dense_ratio}")
    layers = _targets(model, cfg)
    dev = next(model.parameters()).device
    batches = [{k: v.to(dev) for k, v in b.items() if k in ("input_ids", "attention_mask")}
               for b in build_calibration(tok, harmful_records, batch_size=cfg.batch_size, max_length=cfg.max_length)]
    norms = input_sq_norms(model, layers, batches)
    n = 0
    for name, m in layers.items():
        mask = wanda_row_mask(m.weight, norms[name], cfg.dense_ratio)
        m.weight.masked_fill_(mask, 0)
        n += int(mask.sum())
    return {"pruned": n, "layers": len(layers)}
