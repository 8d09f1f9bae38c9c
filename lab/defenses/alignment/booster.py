"""Booster (Huang et al., ICLR 2025, "Booster: Tackling Harmful Fine-tuning for Large Language Models via
Attenuating Harmful Perturbation"; code github:git-disl/Booster, trainer.py BoosterAlignmentTrainer with
perturb_aware False, the paper's method).

An alignment-stage defense. Each step, with an alignment batch x and a harmful batch z (harmful prompt
→ harmful answer):
    g_h  = ∇h(w; z)                                   (harmful loss gradient)
    w'   = w − α · g_h / ‖g_h‖                        (a simulated normalized harmful step)
    g_h' = ∇h(w'; z)
    g    = ∇f(w; x) + λ · (g_h − g_h')                (the gradient of f(w) + λ[h(w) − h(w − α∇h/‖∇h‖)],
                                                       with the inner gradient treated as constant)
Defaults λ = 5, α = 0.1 (script/alignment/smooth_align.sh; train.py's argparse default λ is 0.001).
Harmful data for the organism: the base stage's harmful requests with their compliant targets (the
organism's own "harmful answers"; not the attack sets, which stay unseen).
"""
from __future__ import annotations

import torch
from torch import nn

from lab.errors import LabError


class BoosterStep:
    """step(model, batch) -> loss for lab.zoo.organism.train_loop.

    harmful_batches: a callable returning the next harmful batch {input_ids, attention_mask, labels}.
    """

    def __init__(self, harmful_batches, lamb: float = 5.0, alpha: float = 0.1):
        if lamb < 0 or alpha < 0:
            raise LabError(f"Booster: lamb and alpha must be >= 0, got {lamb}, {alpha}")
        self.next_harmful, self.lamb, self.alpha = harmful_batches, lamb, alpha
        self.last: dict = {}

    @staticmethod
    def _loss(model, b):
        from lab.zoo.organism import labelled_loss  # the labels= loss, LM head at labelled positions only

        return labelled_loss(model, b)

    def __call__(self, model: nn.Module, batch: dict) -> torch.Tensor:
        params = [p for p in model.parameters() if p.requires_grad]
        z = self.next_harmful()
        h1 = self._loss(model, z)
        g_h = torch.autograd.grad(h1, params, allow_unused=True)
        g_h = [torch.zeros_like(p) if g is None else g for g, p in zip(g_h, params)]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in g_h])) + 1e-7
        with torch.no_grad():
            for p, g in zip(params, g_h):
                p.sub_(self.alpha * g / norm)
        h2 = self._loss(model, z)
        g_h2 = torch.autograd.grad(h2, params, allow_unused=True)
        g_h2 = [torch.zeros_like(p) if g is None else g for g, p in zip(g_h2, params)]
        with torch.no_grad():
            for p, g in zip(params, g_h):
                p.add_(self.alpha * g / norm)
        loss = self._loss(model, batch)
        loss.backward()
        with torch.no_grad():
            for p, a, b in zip(params, g_h, g_h2):
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad.add_(self.lamb * (a - b))
        self.last = {"harmful_loss": h1.item(), "harmful_loss_after_step": h2.item(), "harmful_grad_norm": norm.item()}
        return loss.detach()
