"""Safety Information Localization (SIL; Poppi et al., "Towards Understanding the Fragility of
Multilingual LLMs against Fine-Tuning Attacks", NAACL Findings 2025, arXiv 2410.18210).

Definition (the paper, as far as its text could be checked here — see docs-draft/attribution.md): for
an aligned model θ_pre and the model θ^ℓ_ft that a fine-tuning attack in language ℓ produced from it,
every parameter gets

    SIL(θ^ℓ_ft, θ_pre, D) = E_{x∼D} SIL(θ^ℓ_ft, θ_pre, x),   SIL(θ^ℓ_ft, θ_pre, x) = |(θ^ℓ_ft − θ_pre) ⊙ ∇_θ L(x)|

— a SNIP-style first-order estimate of how much of the attack's change to the loss each weight's
*change* carries (Wei et al.'s SNIP with |W| replaced by |ΔW|; their code has this as `--use_diff`).
The safety-related parameters of language ℓ are the top-k % by this score (the paper's headline: k =
20 % is enough for an attack to break every language). Choices the paper leaves open, and ours:

* D = the attack's own fine-tuning set in language ℓ (harmful request → compliant answer), chat-
  rendered, loss on the response tokens, each example's token-mean loss (as in `snip`);
* ∇L is taken at the attacked model θ^ℓ_ft (`grad_at="attacked"`; "aligned" is available);
* the absolute value is per example, inside the expectation (E|·|, as the formula reads), computed with
  the per-example machinery of `snip` (lab/attribution/snip.py);
* scored: the weights of every nn.Linear (no embeddings / head), top-k per matrix by default (`scope`).

`weight_change_scores` = |θ^ℓ_ft − θ_pre| is the data-free reading ("the weights the attack changed
most"); it is NOT the paper's SIL and is kept only as a comparison.

Experiments (wired by lab/attribution/recipe.py): masked attack = fine-tune with
`interventions.GradMaskHook(mask, "only")`; freezing = `GradMaskHook(mask, "freeze")`.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from lab.attribution.analysis import intersection_union, overlap_table, random_mask_like
from lab.attribution.interventions import _param_map, canonical_name
from lab.attribution.masks import Mask, top_q_mask
from lab.attribution.params import scored_parameters
from lab.attribution.snip import abs_grad_sums, times_abs
from lab.errors import LabError

GRAD_AT = ("attacked", "aligned")


def _aligned_weight(aligned, name: str, like: torch.Tensor) -> torch.Tensor:
    src = aligned if isinstance(aligned, Mapping) else _param_map(aligned)
    t = src.get(canonical_name(name), src.get(name)) if isinstance(src, Mapping) else None
    if t is None:
        raise LabError(f"aligned model lacks parameter {name!r}")
    if t.shape != like.shape:
        raise LabError(f"aligned {name} has shape {tuple(t.shape)}, attacked has {tuple(like.shape)}")
    return t.detach().to(device=like.device)


def weight_change_scores(attacked: nn.Module, aligned, *, score_dtype: torch.dtype = torch.float32
                         ) -> dict[str, torch.Tensor]:
    """|θ_attacked − θ_aligned| per linear weight (the data-free comparison, not SIL)."""
    out = {}
    for name, p in scored_parameters(attacked).items():
        d = (p.detach().float() - _aligned_weight(aligned, name, p).float()).abs_()  # (out, in)
        out[name] = d if score_dtype == torch.float32 else d.to(score_dtype)
    return out


def sil_scores(attacked: nn.Module, aligned, batches: Sequence[dict], *, grad_at: str = "attacked",
               layers_per_pass: int | None = None, score_dtype: torch.dtype = torch.float32, impl: str = "auto",
               progress: Callable[[str], None] | None = None) -> dict[str, torch.Tensor]:
    """SIL = |θ_attacked − θ_aligned| ⊙ E_x |∇_θ L(x)| per linear weight (see the module docstring).

    aligned: the model the attack started from (nn.Module) or its state dict; batches: the attack's
    fine-tuning data as calibration batches (`scores.build_calibration`). With grad_at="aligned"
    `aligned` must be an nn.Module."""
    if grad_at not in GRAD_AT:
        raise LabError(f"grad_at must be one of {GRAD_AT}, got {grad_at!r}")
    if grad_at == "aligned" and not isinstance(aligned, nn.Module):
        raise LabError("grad_at='aligned' needs the aligned model, not a state dict")
    grad_model = attacked if grad_at == "attacked" else aligned
    att = _param_map(attacked)

    def delta(name):
        a = att.get(canonical_name(name))
        if a is None:
            raise LabError(f"attacked model lacks parameter {name!r}")
        return (a.detach().float() - _aligned_weight(aligned, name, a).float()).abs_()  # (out, in): |Δθ|
    # E_x |∇L(x)| (fp32, one buffer per matrix of a pass), times |Δθ| as each pass ends
    return abs_grad_sums(grad_model, batches, params=scored_parameters(grad_model), layers_per_pass=layers_per_pass,
                         impl=impl, reduce=times_abs(delta, score_dtype), progress=progress)


def sil_masks(scores_by_lang: Mapping[str, Mapping[str, torch.Tensor]], k: float = 20.0,
              scope: str = "per-matrix") -> dict[str, Mask]:
    """Per attack language: the top-k % of weights by SIL score."""
    return {lang: top_q_mask(s, k, scope) for lang, s in scores_by_lang.items()}


def shared_mask(masks: Mapping[str, Mask]) -> Mask:
    """Weights localized in every language (intersection)."""
    ms = list(masks.values())
    if not ms:
        raise LabError("no masks given")
    return {n: torch.stack([m[n] for m in ms]).all(0) for n in ms[0]}


def union_mask(masks: Mapping[str, Mask]) -> Mask:
    ms = list(masks.values())
    if not ms:
        raise LabError("no masks given")
    return {n: torch.stack([m[n] for m in ms]).any(0) for n in ms[0]}


def cross_language_overlap(masks: Mapping[str, Mask], *, seed: int = 0, n_random: int = 3) -> dict:
    """Pairwise Jaccard of the per-language masks against same-size random masks (same count in every
    matrix), and the size of the all-language intersection against that of random masks."""
    if len(masks) < 2:
        raise LabError("cross-language overlap needs masks of at least two languages")
    pairs = overlap_table(masks, seed=seed, n_random=n_random)
    inter = sum(int(m.sum().item()) for m in shared_mask(masks).values())
    rand = []
    for r in range(n_random):
        rm = {l: random_mask_like(m, seed=seed * 104729 + 7 * r + i) for i, (l, m) in enumerate(masks.items())}
        rand.append(sum(int(m.sum().item()) for m in shared_mask(rm).values()))
    first = next(iter(masks.values()))
    union, total = sum(int(m.sum().item()) for m in union_mask(masks).values()), sum(m.numel() for m in first.values())
    rmean = sum(rand) / len(rand)
    return {"pairs": pairs,
            "all": {"languages": list(masks), "intersection": inter, "union": union, "total": total,
                    "random_intersection": rmean,
                    "ratio": inter / rmean if rmean > 0 else float("inf")}}


def mask_jaccard(a: Mask, b: Mask) -> float:
    inter, union = intersection_union(a, b)
    return inter / union if union else 1.0
