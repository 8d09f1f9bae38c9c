"""Restoring safety weights after fine-tuning.

* `restore_safety_weights` — copy the safety mask's entries back from the aligned model (the lab's
  existing intervention, `lab.attribution.interventions.restore`, reused unchanged; the mask is the
  lab's SNIP/Wanda set-difference mask). On the organism it restored nothing (README, safety
  localization).
* `layer_selective_restore` — *layer-selective safety restore, in the spirit of NLSR* (Yi et al., AAAI
  2025, "NLSR: Neuron-Level Safety Realignment of Large Language Models Against Harmful Fine-Tuning").
  NLSR (i) builds a safety reference by amplifying the aligned model, (ii) finds safety-critical
  neurons, (iii) per layer compares the fine-tuned model's safety neurons with the reference's and
  (iv) transplants the reference's safety neurons only into the layers that drifted most. What we
  compute — named differently because it is not NLSR:
    reference R = W_aligned + γ·(W_aligned − W_base)     (γ = `amplify`, default 0: no amplification;
                                                          NLSR's amplification is LoRA-based, ours is
                                                          weight extrapolation)
    safety region per layer L = the lab's safety mask restricted to block L (NLSR: its own neuron
                                scores; we reuse the lab's masks, weight-level not neuron-level)
    similarity s_L = cos(W_ft[mask_L], R[mask_L])  (NLSR: similarity of safety neurons per layer)
    restore the mask_L entries from R in the `n_layers` blocks with the lowest s_L (or every block with
    s_L < `threshold` when given).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lab.attribution.interventions import _param_map, canonical_name, restore
from lab.attribution.scores import layer_index
from lab.errors import LabError


def restore_safety_weights(model: nn.Module, aligned: nn.Module, mask) -> int:
    """The lab's restore: masked entries copied from the aligned model. Returns entries restored."""
    return restore(model, aligned, mask)


@dataclass
class LayerRestoreConfig:
    n_layers: int = 1               # blocks to restore (lowest similarity first)
    threshold: float | None = None  # if set: restore every block with similarity < threshold instead
    amplify: float = 0.0            # γ: reference = aligned + γ (aligned − base); needs base when > 0


@dataclass
class LayerRestoreResult:
    similarity: dict[int, float] = field(default_factory=dict)
    restored_layers: list[int] = field(default_factory=list)
    restored_entries: int = 0


@torch.no_grad()
def reference_weights(aligned: nn.Module, base: nn.Module | None, names, amplify: float) -> dict[str, torch.Tensor]:
    a = _param_map(aligned)
    if amplify and base is None:
        raise LabError("layer-selective restore: amplify > 0 needs the base model")
    b = _param_map(base) if amplify else {}
    out = {}
    for n in names:
        c = canonical_name(n)
        if c not in a:
            raise LabError(f"layer-selective restore: aligned model has no parameter {n!r}")
        out[c] = a[c].detach() + (amplify * (a[c].detach() - b[c].detach()) if amplify else 0)
    return out


@torch.no_grad()
def layer_selective_restore(model: nn.Module, aligned: nn.Module, mask, cfg: LayerRestoreConfig | None = None,
                            base: nn.Module | None = None) -> LayerRestoreResult:
    cfg = cfg or LayerRestoreConfig()
    params = _param_map(model)
    ref = reference_weights(aligned, base, mask.keys(), cfg.amplify)
    by_layer: dict[int, list[str]] = {}
    for n in mask:
        L = layer_index(canonical_name(n))
        if L is not None and mask[n].any():
            by_layer.setdefault(L, []).append(canonical_name(n))
    if not by_layer:
        raise LabError("layer-selective restore: the mask selects no weight inside a transformer block")
    res = LayerRestoreResult()
    for L, names in sorted(by_layer.items()):
        ft = torch.cat([params[n].detach().float()[mask[n].bool().to(params[n].device)] for n in names])
        rf = torch.cat([ref[n].float()[mask[n].bool().to(ref[n].device)] for n in names])
        res.similarity[L] = torch.nn.functional.cosine_similarity(ft[None], rf[None]).item()
    if cfg.threshold is not None:
        chosen = [L for L, s in res.similarity.items() if s < cfg.threshold]
    else:
        chosen = sorted(res.similarity, key=lambda L: (res.similarity[L], L))[:cfg.n_layers]
    for L in sorted(chosen):
        sub = {n: mask[n] for n in mask if canonical_name(n) in by_layer[L]}
        res.restored_entries += restore(model, {n: ref[canonical_name(n)] for n in sub}, sub)
    res.restored_layers = sorted(chosen)
    return res
