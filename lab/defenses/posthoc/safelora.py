"""SafeLoRA (Hsu et al., NeurIPS 2024, "Safe LoRA: the Silver Lining of Reducing Safety Risks when
Fine-tuning Large Language Models"; code github:IBM/SafeLoRA, model.py).

Post-fine-tuning, LoRA only, data-free. For every LoRA layer i:

    V_i   = W_aligned,i − W_base,i                     (the "alignment matrix", out x out after the product)
    C_i   = V_i V_iᵀ / ‖V_i‖_F                         (official code: torch.mm(vec, vec.t()) / torch.norm(vec))
    ΔW_i  = B_i A_i                                    (the adapter's update; LoRA scaling cancels in the cosine)
    cos_i = cos(vec(C_i ΔW_i), vec(ΔW_i))
    if the layer is selected: B_i ← C_i B_i            (so ΔW_i ← C_i ΔW_i)

Selection (`mode`): "threshold" projects every layer with cos_i ≤ `threshold` (official default 0.5);
"number" projects the `num_proj_layers` layers with the lowest cos_i (official default 10).

Follows the official code, not the paper, where they differ:
* normalisation: the paper's projection is V Vᵀ/‖V‖_F written as a projection; the code divides by
  ‖V‖_F, not ‖V‖²_F (so C is a projection only up to scale ‖V‖_F). We default to the code
  (`normalize="fro"`); `normalize="fro2"` divides by ‖V‖²_F, which makes C an exact orthogonal
  projection when V has rank 1 and bounds its eigenvalues by 1 otherwise (both are approximations of
  the projection V(VᵀV)⁻¹Vᵀ onto V's column space).
* the official code rounds cos to 5 decimals (numpy.round); we do too, so threshold ties match.
* number mode: the official code first calls projected_weighted(…, 0.3) — which writes projected B's
  into the model (IBM/SafeLoRA#2) — then reads cos from that pass and projects again. In the released
  code the second pass recomputes from its deep copy, so the final weights are right, but the model is
  mutated in between and the first pass costs a full projection. Here the cosines are computed once on
  the untouched adapter and each selected layer is projected once; nothing is written before the
  selection is final. The official "≤ k-th smallest cosine" rule can select more than k layers on ties;
  we select exactly k (stable order by cosine, then layer order).
* "layers" are LoRA modules (each q/k/v/o/gate/up/down of each block), as in the official loop over
  lora_B parameters; V is matched by module name here, by parameter order there (the official name
  filter `module in name` also picks up biases such as Qwen2's q/k/v_proj.bias, which breaks that
  order; we use weights only).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lab.defenses.common import linear_weights, lora_pairs
from lab.errors import LabError


@dataclass
class SafeLoRAConfig:
    mode: str = "threshold"          # "threshold" | "number" (official default: number)
    threshold: float = 0.5           # official default
    num_proj_layers: int = 10        # official default
    normalize: str = "fro"           # "fro" (official code) | "fro2"
    adapter: str = "default"


@dataclass
class SafeLoRAResult:
    cosines: dict[str, float] = field(default_factory=dict)
    projected: list[str] = field(default_factory=list)


def alignment_matrices(aligned: nn.Module, base: nn.Module, names, normalize: str = "fro") -> dict[str, torch.Tensor]:
    """C_i = V Vᵀ / ‖V‖_F (or ‖V‖²_F) with V = W_aligned − W_base, for each weight name."""
    a, b = linear_weights(aligned), linear_weights(base)
    out = {}
    for n in names:
        if n not in a or n not in b:
            raise LabError(f"SafeLoRA: aligned or base model has no weight {n!r}")
        if a[n].shape != b[n].shape:
            raise LabError(f"SafeLoRA: {n} has shape {tuple(a[n].shape)} in the aligned model, {tuple(b[n].shape)} in the base")
        v = (a[n].detach().float() - b[n].detach().float())
        norm = torch.linalg.norm(v)
        if norm == 0:
            raise LabError(f"SafeLoRA: aligned and base weights of {n} are identical (V = 0): no alignment direction")
        if normalize == "fro":
            out[n] = v @ v.T / norm
        elif normalize == "fro2":
            out[n] = v @ v.T / norm ** 2
        else:
            raise LabError(f"SafeLoRA: normalize must be 'fro' or 'fro2', got {normalize!r}")
    return out


@torch.no_grad()
def safelora(peft_model: nn.Module, aligned: nn.Module, base: nn.Module,
             cfg: SafeLoRAConfig | None = None) -> SafeLoRAResult:
    """Project the selected LoRA layers' B matrices in place; returns cosines and projected layer names."""
    cfg = cfg or SafeLoRAConfig()
    pairs = lora_pairs(peft_model, cfg.adapter)
    C = alignment_matrices(aligned, base, list(pairs), cfg.normalize)
    res = SafeLoRAResult()
    for n, (_, A, B) in pairs.items():
        P = C[n].to(B.device, torch.float32)
        dw = B.float() @ A.float()
        cos = torch.nn.functional.cosine_similarity((P @ dw).reshape(1, -1), dw.reshape(1, -1)).item()
        res.cosines[n] = round(cos, 5)
    if cfg.mode == "threshold":
        selected = [n for n, c in res.cosines.items() if c <= cfg.threshold]
    elif cfg.mode == "number":
        if cfg.num_proj_layers < 0:
            raise LabError(f"SafeLoRA: num_proj_layers must be >= 0, got {cfg.num_proj_layers}")
        order = sorted(range(len(res.cosines)), key=lambda i: (list(res.cosines.values())[i], i))
        names = list(res.cosines)
        selected = [names[i] for i in sorted(order[:cfg.num_proj_layers])]
    else:
        raise LabError(f"SafeLoRA: mode must be 'threshold' or 'number', got {cfg.mode!r}")
    for n in selected:
        _, _, B = pairs[n]
        B.copy_((C[n].to(B.device, torch.float32) @ B.float()).to(B.dtype))
    res.projected = selected
    return res
