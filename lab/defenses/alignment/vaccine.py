"""Vaccine (Huang et al., NeurIPS 2024, "Vaccine: Perturbation-aware Alignment for Large Language
Models against Harmful Fine-tuning Attack"; code github:git-disl/Vaccine, trainer.py VaccineTrainer).

An alignment-stage defense: each alignment step is a min-max step on the hidden states.
  1. forward + backward on the alignment batch, recording g_l = ∂L/∂h_l for the output h_l of every
     attention module (official: the LlamaAttention / OPTAttention modules, grad_output[0]);
  2. e_l = ρ · g_l / ‖(g_1, …, g_L)‖₂ (one global norm over all modules and tokens, + 1e-7);
  3. zero the gradients; forward again with h_l ← h_l + e_l in every attention module; backward;
     the optimizer steps on this second gradient only.
The paper describes the perturbation on each layer's hidden embedding; the official code perturbs the
attention modules' outputs — we follow the code. ρ default 2 (official train.py default; the paper's
scripts sweep it). `vaccine_step` plugs into lab.zoo.organism.train_loop(step=...) and works on any
decoder whose blocks have a `self_attn` module (Qwen2, Llama, ...).
"""
from __future__ import annotations

import torch
from torch import nn

from lab.errors import LabError


def attention_modules(model: nn.Module) -> list[nn.Module]:
    mods = [m for n, m in model.named_modules() if n.endswith("self_attn")]
    if not mods:
        raise LabError("Vaccine: the model has no '*.self_attn' modules to perturb")
    return mods


def _first(out):
    return out[0] if isinstance(out, tuple) else out


class VaccineStep:
    """step(model, batch) -> loss for lab.zoo.organism.train_loop; keeps the last perturbation in .last_e."""

    def __init__(self, rho: float = 2.0):
        if rho < 0:
            raise LabError(f"Vaccine: rho must be >= 0, got {rho}")
        self.rho = rho
        self.last_e: dict[int, torch.Tensor] = {}
        self.last_grads: dict[int, torch.Tensor] = {}

    def _loss(self, model, batch):
        from lab.zoo.organism import labelled_loss  # the labels= loss, LM head at labelled positions only

        return labelled_loss(model, batch)

    def __call__(self, model: nn.Module, batch: dict) -> torch.Tensor:
        mods = attention_modules(model)
        grads: dict[int, torch.Tensor] = {}
        handles = []
        for i, m in enumerate(mods):
            def fwd(mod, args, out, i=i):
                h = _first(out)
                if h.requires_grad:
                    h.register_hook(lambda g, i=i: grads.__setitem__(i, g.detach().clone()))
            handles.append(m.register_forward_hook(fwd))
        try:
            self._loss(model, batch).backward()
        finally:
            for h in handles:
                h.remove()
        model.zero_grad(set_to_none=True)
        if len(grads) != len(mods):
            raise LabError("Vaccine: did not record a hidden-state gradient for every attention module")
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))
        e = {i: self.rho * g / (norm + 1e-7) for i, g in grads.items()}
        self.last_grads, self.last_e = grads, e
        handles = []
        for i, m in enumerate(mods):
            def perturb(mod, args, out, i=i):
                if isinstance(out, tuple):
                    return (out[0] + e[i],) + tuple(out[1:])
                return out + e[i]
            handles.append(m.register_forward_hook(perturb))
        try:
            loss = self._loss(model, batch)
            loss.backward()
        finally:
            for h in handles:
                h.remove()
        return loss.detach()
