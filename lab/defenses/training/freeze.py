"""Freezing during fine-tuning: the safety weights (the lab's masks) or a block of safety layers.

* `FreezeSafetyWeights(mask)` — the masked entries may not change (the lab's GradMaskHook) (Wei et al. 2024's / Poppi et al.'s
  "freeze the safety-critical weights"; the lab's SNIP/Wanda set-difference masks). Uses
  `lab.attribution.interventions.attach_grad_mask(mode="freeze")`: full fine-tuning zeroes the masked
  gradients and writes the snapshot back after every step; LoRA trains through a masked forward and
  merges ΔW ⊙ ¬mask (see that module). On the organism it did not defend (README, safety localization).
* `FreezeLayers(layers)` — SPPFT (Li et al., ICLR 2025, "Safety Layers in Aligned Large Language Models:
  The Key to LLM Security"): fine-tune with the parameters of a contiguous block of "safety layers"
  frozen. `find_safety_layers` locates the block the way the paper's first step does — per layer, the
  cosine similarity of the last prompt token's hidden state between pairs of benign prompts (N–N) and
  between a benign and a harmful prompt (N–M); the safety layers are where the N–N minus N–M gap
  opens up. We take the `width` consecutive layers with the largest gap increase
  (gap after the block minus gap before it). Deviation: the paper refines the block's bounds with its
  over-rejection scaling experiment; we do not. Under LoRA, freezing a block = its LoRA factors get no
  gradient (B stays 0, so the block is unchanged); under full fine-tuning its weights get none.
"""
from __future__ import annotations

import re

import torch
from torch import nn
from lab.attribution.scores import layer_index
from lab.errors import LabError
from lab.train import TrainHook


def FreezeSafetyWeights(mask):
    """The lab's GradMaskHook in "freeze" mode (lab.attribution.interventions), reused unchanged."""
    from lab.attribution.interventions import GradMaskHook

    return GradMaskHook(mask, "freeze")


class FreezeLayers(TrainHook):
    def __init__(self, layers):
        self.layers = sorted(set(int(l) for l in layers))
        if not self.layers:
            raise LabError("FreezeLayers: no layers given")
        self.frozen: list[nn.Parameter] = []

    def before_train(self, trainer) -> None:
        self.frozen = []
        for n, p in trainer.model.named_parameters():
            if p.requires_grad and layer_index(n) in self.layers:
                p.requires_grad_(False)
                self.frozen.append(p)
        if not self.frozen:
            raise LabError(f"FreezeLayers: no trainable parameter in layers {self.layers}")

    def after_train(self, trainer) -> None:
        for p in self.frozen:
            p.requires_grad_(True)


@torch.no_grad()
def last_token_states(model: nn.Module, tok, prompts: list[str]) -> torch.Tensor:
    """(n_layers, n_prompts, hidden): each block's output at the last prompt token (chat-rendered)."""
    from lab.generate import render_prompts

    dev = next(model.parameters()).device
    enc = tok(render_prompts(tok, prompts), return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
    if tok.padding_side != "left":
        raise LabError("find_safety_layers needs a left-padding tokenizer (lab.models.load_tokenizer sets it)")
    out = model(**enc, output_hidden_states=True, use_cache=False)
    return torch.stack([h[:, -1].float() for h in out.hidden_states[1:]])


def layer_gaps(model, tok, benign: list[str], harmful: list[str]) -> list[float]:
    """Per layer: mean cos(N_i, N_j) over benign pairs minus mean cos(N_i, M_j) (SPPFT's N-N vs N-M)."""
    n = min(len(benign), len(harmful))
    if n < 2:
        raise LabError("find_safety_layers needs at least 2 benign and 2 harmful prompts")
    hb = last_token_states(model, tok, benign[:n])
    hm = last_token_states(model, tok, harmful[:n])
    gaps = []
    for L in range(hb.shape[0]):
        b = torch.nn.functional.normalize(hb[L], dim=-1)
        m = torch.nn.functional.normalize(hm[L], dim=-1)
        nn_sim = (b @ b.T)[~torch.eye(n, dtype=torch.bool)].mean()
        nm_sim = (b @ m.T).mean()
        gaps.append(float(nn_sim - nm_sim))
    return gaps


def find_safety_layers(model, tok, benign: list[str], harmful: list[str], width: int = 1) -> dict:
    """The `width` consecutive layers with the largest N-N minus N-M gap increase (0-based layer ids)."""
    gaps = layer_gaps(model, tok, benign, harmful)
    L = len(gaps)
    if not 1 <= width <= L:
        raise LabError(f"find_safety_layers: width must be in [1, {L}], got {width}")
    padded = [0.0] + gaps            # gap "before layer 0" = 0 (embeddings: no safety distinction yet)
    best = max(range(L - width + 1), key=lambda s: (padded[s + width] - padded[s], -s))
    return {"layers": list(range(best, best + width)), "gaps": gaps}
