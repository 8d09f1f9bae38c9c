"""Token-wise constrained fine-tuning (Qi et al., ICLR 2025, "Safety Alignment Should Be Made More Than
Just a Few Tokens Deep", Sec. 4; code github:Unispac/shallow-vs-deep-alignment,
finetuning_buckets/trainer/per_token_gradient.py soft_sft_loss / get_beta_list, finetune.py defaults).

Paper objective, per response token t with Δ_t = log π_θ(y_t|x,y<t) − log π_aligned(y_t|x,y<t):
    min_θ  − mean_t (2/β_t) · log σ(β_t Δ_t)
with β_t large on the first tokens (the model may not move them far from the aligned model) and small
later (≈ plain SFT). The official code computes a loss with the same gradient instead:
    L = − mean_t  w_t · log π_θ(y_t),   w_t = clamp(2 (1 − σ(β_t Δ_t + b_t)), min=1e-3), w_t detached
(the mean is over all response tokens of the batch) and adds a shift b_t = `bias_shift` on the first
`bias_length` tokens. We compute the official loss. β_t: β·first_token_bias_factor for t = 0,
β·bias_factor for 1 ≤ t < bias_length, β after. Defaults (finetune.py / ConstrainedSFTTrainer):
β = 0.1, bias_factor = 20, first_token_bias_factor = 5, bias_length = 5, bias_shift = 2.
Reference π_aligned: the model before fine-tuning — for LoRA the same model with its adapters disabled
(peft's disable_adapter; the official code precomputes the reference log-probs with a separate
copy), for full fine-tuning a frozen copy.
"""
from __future__ import annotations

import copy
from contextlib import nullcontext

import torch

from lab.defenses.common import token_logps
from lab.train import TrainHook


def beta_list(n: int, beta: float, bias_factor: float, first_token_bias_factor: float, bias_length: int,
              bias_shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """β_t and b_t for a response of n tokens (official get_beta_list)."""
    b = torch.full((n,), float(beta))
    s = torch.zeros(n)
    k = min(bias_length, n)
    if k:
        b[:k] = beta * bias_factor
        b[0] = beta * first_token_bias_factor
        s[:k] = bias_shift
    return b, s


def tokenwise_loss(policy: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor, *, beta: float = 0.1,
                   bias_factor: float = 20, first_token_bias_factor: float = 5, bias_length: int = 5,
                   bias_shift: float = 2.0) -> torch.Tensor:
    """policy/reference: per-token log-probs (B, T); mask: response positions. The official loss."""
    terms = []
    for i in range(policy.shape[0]):
        sel = mask[i]
        lp, lr = policy[i][sel], reference[i][sel]
        b, s = beta_list(len(lp), beta, bias_factor, first_token_bias_factor, bias_length, bias_shift)
        w = torch.clamp(2 * (1 - torch.sigmoid(b.to(lp) * (lp - lr) + s.to(lp))).detach(), min=1e-3)
        terms.append(w * lp)
    return -torch.cat(terms).mean()


class TokenwiseConstrainedHook(TrainHook):
    def __init__(self, beta: float = 0.1, bias_factor: float = 20, first_token_bias_factor: float = 5,
                 bias_length: int = 5, bias_shift: float = 2.0):
        self.kw = dict(beta=beta, bias_factor=bias_factor, first_token_bias_factor=first_token_bias_factor,
                       bias_length=bias_length, bias_shift=bias_shift)

    def before_train(self, trainer) -> None:
        model = trainer.model
        self.ref = None
        if not hasattr(model, "disable_adapter"):
            self.ref = copy.deepcopy(model).eval()
            for p in self.ref.parameters():
                p.requires_grad_(False)
        self.orig = trainer.compute_loss
        trainer.compute_loss = self.compute_loss

    def reference_logps(self, model, inputs) -> torch.Tensor:
        with torch.no_grad():
            if self.ref is not None:
                return token_logps(self.ref, inputs)[0]
            ctx = model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()
            was = model.training
            model.eval()
            with ctx:
                lp = token_logps(model, inputs)[0]
            model.train(was)
            return lp

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ref = self.reference_logps(model, inputs)
        lp, mask = token_logps(model, inputs)
        loss = tokenwise_loss(lp, ref, mask, **self.kw)
        return (loss, None) if return_outputs else loss

    def after_train(self, trainer) -> None:
        trainer.compute_loss = self.orig
        self.ref = None
