"""Importance scores for every weight of every linear layer: SNIP (Wei et al.), pooled SNIP, Wanda, random.

Conventions (shared by all methods, tested in tests/test_attribution*.py and tests/test_reference_port.py):

* Scored parameters: see lab/attribution/params.py (every nn.Linear weight; lm_head / embeddings opt-in).
* Calibration batches: see lab/attribution/calibration.py (right-padded, labels -100 outside the
  assistant response; optional `loss_weight` per token and `example_weight` per example).
* `snip` — Wei et al.'s estimator: S = |W| ⊙ Σᵢ wᵢ |∇_W ℓᵢ|, ℓᵢ the token-mean loss of example i
  (lab/attribution/snip.py). `snip-pooled`: S = |W ⊙ ∇_W L|, L the token-mean loss of the pooled set.
* Wanda: S_ij = |W_ij| · ‖X_j‖₂ where X stacks the layer's inputs at the response-token positions
  (positions t with labels[t] != -100; the reference's `tar.ne(-100)`), each row weighted by its batch's
  `loss_weight` (so with `build_balanced_calibration` every language counts the same). A forward
  pre-hook adds the squared inputs into one fp32 vector per layer; activations are never stored.
* random: i.i.d. U(0,1) per weight from a generator seeded by (seed, parameter name) — the control.

Memory: see lab/attribution/memory.py and benchmarks/attribution_memory.py.
"""
from __future__ import annotations

import zlib
from typing import Callable, Sequence

import torch
from torch import nn

from lab.attribution.calibration import (build_balanced_calibration, build_calibration, encode_chat,  # noqa: F401
                                         n_examples, n_loss_tokens, per_example_mean_losses, response_loss_sum,
                                         token_weight)
from lab.attribution.params import (input_of, layer_groups, layer_index, model_device, module_kind,  # noqa: F401
                                    scored_modules, scored_parameters, to_device)
from lab.attribution.snip import abs_grad_sums, snip_pooled_scores, snip_scores  # noqa: F401
from lab.errors import LabError

METHODS = ("snip", "snip-pooled", "wanda", "random")


def _select_rows(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if x.shape[:-1] == mask.shape:
        return x[mask]
    if x.shape[:-1].numel() == mask.numel():
        return x.reshape(-1, x.shape[-1])[mask.reshape(-1)]
    raise LabError(f"layer input of shape {tuple(x.shape)} does not align with the token mask "
                   f"{tuple(mask.shape)} (routed/MoE experts are not supported by Wanda here)")


class TokenInputs:
    """Forward pre-hooks that hand every scored layer's inputs at response-token positions to `fn`.

    fn(name, rows, weight): rows (n_response_tokens, in_features) in the model dtype; weight = the
    batch's loss_weight (default `default_w`). Used by Wanda (sums of squares) and ActSVD (Gram matrices)."""

    def __init__(self, modules: dict[str, nn.Module], fn, default_w: float = 1.0):
        self.ctx = {"mask": None, "w": default_w}
        self.default_w = default_w
        self.handles = []
        for name, mod in modules.items():
            def hook(m, args, kwargs, name=name):
                x = input_of(args, kwargs)
                if isinstance(m, nn.Embedding):
                    x = x.unsqueeze(-1)
                fn(name, _select_rows(x, self.ctx["mask"]), self.ctx["w"])
            self.handles.append(mod.register_forward_pre_hook(hook, with_kwargs=True))

    def run(self, model: nn.Module, batches: Sequence[dict], progress=None, tag: str = "") -> None:
        dev = model_device(model)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for bi, batch in enumerate(batches):
                    self.ctx["w"] = token_weight(batch, self.default_w)  # read before to_device drops it
                    b = to_device(batch, dev)
                    self.ctx["mask"] = b["labels"] != -100  # (B, T): response positions (reference: tar.ne(-100))
                    model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False)
                    if progress:
                        progress(f"{tag} batch {bi + 1}/{len(batches)}")
        finally:
            for h in self.handles:
                h.remove()
            model.train(was_training)


def wanda_scores(model: nn.Module, batches: Sequence[dict], *, params: dict[str, nn.Parameter] | None = None,
                 include_embeddings: bool = False, include_lm_head: bool = False,
                 score_dtype: torch.dtype = torch.float32, row_chunk: int = 4096,
                 progress: Callable[[str], None] | None = None) -> dict[str, torch.Tensor]:
    """Wanda scores |W_ij| · ‖X_j‖₂ over response-token inputs; only per-feature sums of squares kept.

    For an nn.Embedding (include_embeddings=True) the input is one-hot, so ‖X_v‖₂ = sqrt(count of token
    v at response positions) and S[v, :] = |E[v, :]| · sqrt(count_v).
    """
    modules = scored_modules(model, include_embeddings, include_lm_head)
    if params is not None:
        modules = {n: m for n, m in modules.items() if n in params}
    sumsq: dict[str, torch.Tensor] = {}
    for name, mod in modules.items():
        n_in = mod.num_embeddings if isinstance(mod, nn.Embedding) else mod.weight.shape[1]
        sumsq[name] = torch.zeros(n_in, dtype=torch.float32, device=mod.weight.device)  # (in,)

    def add(name, rows, w):
        acc = sumsq[name]
        if isinstance(modules[name], nn.Embedding):
            acc.add_(torch.bincount(rows.reshape(-1), minlength=acc.numel()).to(acc), alpha=w)
            return
        for i in range(0, rows.shape[0], row_chunk):
            acc.add_(rows[i:i + row_chunk].float().pow(2).sum(0), alpha=w)  # (in,)
    TokenInputs(modules, add).run(model, batches, progress, "wanda")
    scores = {}
    for name, mod in modules.items():
        norm = sumsq.pop(name).sqrt_()  # (in,): ‖X_j‖₂
        w = mod.weight.detach()
        s = w.abs().float().mul_(norm[:, None] if isinstance(mod, nn.Embedding) else norm[None, :])  # (out, in)
        scores[name] = s if score_dtype == torch.float32 else s.to(score_dtype)
    return scores


def random_scores(model: nn.Module, *, params: dict[str, nn.Parameter] | None = None, seed: int = 0,
                  score_dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """U(0,1) scores, reproducible per (seed, parameter name) regardless of which others are scored."""
    params = params if params is not None else scored_parameters(model)
    out = {}
    for name, p in params.items():
        g = torch.Generator(device=p.device)
        g.manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2 ** 63))
        out[name] = torch.rand(p.shape, generator=g, device=p.device, dtype=torch.float32).to(score_dtype)
    return out


def compute_scores(model: nn.Module, method: str, batches: Sequence[dict] | None = None, *,
                   include_embeddings: bool = False, include_lm_head: bool = False, seed: int = 0,
                   layers_per_pass: int | None = None, score_dtype: torch.dtype = torch.float32,
                   progress: Callable[[str], None] | None = None) -> dict[str, torch.Tensor]:
    """Dispatch on method in METHODS ("snip", "snip-pooled", "wanda", "random")."""
    if method not in METHODS:
        raise LabError(f"unknown attribution method {method!r}; expected one of {', '.join(METHODS)}")
    params = scored_parameters(model, include_embeddings=include_embeddings, include_lm_head=include_lm_head)
    if method == "random":
        return random_scores(model, params=params, seed=seed, score_dtype=score_dtype)
    if not batches:
        raise LabError(f"method {method!r} needs calibration batches")
    if method == "snip":
        return snip_scores(model, batches, params=params, layers_per_pass=layers_per_pass,
                           score_dtype=score_dtype, progress=progress)
    if method == "snip-pooled":
        return snip_pooled_scores(model, batches, params=params, layers_per_pass=layers_per_pass,
                                  score_dtype=score_dtype, progress=progress)
    return wanda_scores(model, batches, params=params, include_embeddings=include_embeddings,
                        include_lm_head=include_lm_head, score_dtype=score_dtype, progress=progress)
