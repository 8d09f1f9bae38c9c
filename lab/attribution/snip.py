"""SNIP scores: Wei et al.'s per-example estimator (`snip`) and the pooled-gradient one (`snip-pooled`).

`snip` (Wei et al. 2024, reference code `prune_wandg`, their "SNIP"): every example i has its own
token-mean response loss ℓᵢ (HF's `model(input_ids, labels=...)` loss of a batch of one), the absolute
value of each example's gradient is accumulated, and

    S = |W| ⊙ Σᵢ wᵢ |∇_W ℓᵢ|          wᵢ = example_weight (default 1/N_examples; reference: 1)

A weight whose per-example gradients disagree in sign still scores high. `snip-pooled` is the
first-order Taylor score of the pooled loss, S = |W ⊙ ∇_W L| with L = Σ_tokens loss_weight · CE
(default the token mean over the whole calibration set): there opposite per-example gradients cancel.

Per-example gradients without batch-size-one passes ("outer", the default for nn.Linear weights): for
a linear layer y = x Wᵀ, ∇_W ℓᵢ = Σ_t g_{i,t} x_{i,t}ᵀ with g = ∂(Σᵢ wᵢ ℓᵢ)/∂y restricted to example i
(examples of a batch never interact, and right padding gets zero gradient), so one batched
forward/backward gives every example's gradient: a forward hook keeps the layer's input, a hook on its
output receives g, and |g_iᵀ x_i| is added into one fp32 buffer per matrix, one example at a time
(transient: one out x in matrix). No weight `.grad` is ever formed. Embeddings, tied weights or a module
called twice per forward fall back to "microbatch": one forward/backward per example, unpadded, with a
post-accumulate-grad hook adding |.grad| into the buffer. Both equal batch size 1 to float tolerance
(tests/test_attribution_snip.py, tests/test_reference_port.py).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from lab.attribution.calibration import (example_weight, n_examples, n_loss_tokens, per_example_mean_losses,
                                         response_loss_sum, token_weight)
from lab.attribution.params import (input_of, layer_groups, model_device, scored_modules, scored_parameters,
                                    to_device)
from lab.errors import LabError

IMPLS = ("auto", "outer", "microbatch")


class _Frozen:
    """Every parameter requires_grad=False inside; restores requires_grad, .grad and train mode after."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.req = {n: p.requires_grad for n, p in self.model.named_parameters()}
        self.training = self.model.training
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
            p.grad = None
        return self

    def __exit__(self, *exc):
        for n, p in self.model.named_parameters():
            p.requires_grad_(self.req[n])
            p.grad = None
        self.model.train(self.training)


def _choose_impl(model: nn.Module, names: Sequence[str], impl: str) -> str:
    if impl not in IMPLS:
        raise LabError(f"snip impl must be one of {IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    mods = scored_modules(model, include_embeddings=True, include_lm_head=True)
    uses: dict[int, int] = {}
    for m in model.modules():
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor):
            uses[id(w)] = uses.get(id(w), 0) + 1
    ok = all(isinstance(mods.get(n), nn.Linear) and uses[id(mods[n].weight)] == 1 for n in names)
    return "outer" if ok else "microbatch"


def _outer_pass(model, mods: dict[str, nn.Module], bufs: dict, batches, default_w, dev, progress, tag):
    ctx = {"B": 0, "calls": {}}
    handles = []

    def fwd_hook(name):
        def hook(mod, args, kwargs, out):
            if not out.requires_grad:
                return
            ctx["calls"][name] = ctx["calls"].get(name, 0) + 1
            if ctx["calls"][name] > 1:
                raise LabError(f"{name} is called twice per forward; use impl='microbatch'")
            x = input_of(args, kwargs).detach()
            buf = bufs[name]

            def grad_hook(g, x=x, buf=buf):
                B = ctx["B"]
                xs = x.reshape(B, -1, x.shape[-1])  # (B, T, in)
                gs = g.reshape(B, -1, g.shape[-1])  # (B, T, out)
                for i in range(B):
                    buf.add_((gs[i].float().T @ xs[i].float()).abs_())  # (out, in) = |∇_W ℓᵢ| · wᵢ
            out.register_hook(grad_hook)
        return hook
    for name, mod in mods.items():
        handles.append(mod.register_forward_hook(fwd_hook(name), with_kwargs=True))
    emb = model.get_input_embeddings()
    handles.append(emb.register_forward_hook(lambda m, a, out: out.requires_grad_(True)))
    try:
        for bi, batch in enumerate(batches):
            w = example_weight(batch, default_w)
            b = to_device(batch, dev)
            ctx["B"], ctx["calls"] = b["input_ids"].shape[0], {}
            losses = per_example_mean_losses(model, b)  # (B,)
            (losses.sum() * w).backward()
            if progress:
                progress(f"snip {tag} batch {bi + 1}/{len(batches)}")
    finally:
        for h in handles:
            h.remove()


def _microbatch_pass(model, params: dict[str, nn.Parameter], bufs: dict, batches, default_w, dev, progress, tag):
    handles = []
    for name, p in params.items():
        p.requires_grad_(True)

        def hook(param, buf=bufs[name]):
            buf.add_(param.grad.float().abs_())
            param.grad = None
        handles.append(p.register_post_accumulate_grad_hook(hook))
    try:
        for bi, batch in enumerate(batches):
            w = example_weight(batch, default_w)
            b = to_device(batch, dev)
            for i in range(b["input_ids"].shape[0]):
                L = int(b["attention_mask"][i].sum().item())
                one = {k: v[i:i + 1, :L] for k, v in b.items()}  # (1, L): the example alone, unpadded
                if not (one["labels"][:, 1:] != -100).any():
                    continue
                (per_example_mean_losses(model, one).sum() * w).backward()
            if progress:
                progress(f"snip {tag} batch {bi + 1}/{len(batches)}")
    finally:
        for h in handles:
            h.remove()
        for p in params.values():
            p.requires_grad_(False)


def abs_grad_sums(model: nn.Module, batches: Sequence[dict], *, params: dict[str, nn.Parameter] | None = None,
                  layers_per_pass: int | None = None, impl: str = "auto",
                  reduce: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
                  progress: Callable[[str], None] | None = None) -> dict[str, torch.Tensor]:
    """Σᵢ wᵢ |∇_W ℓᵢ| per scored matrix (fp32, ℓᵢ = token-mean response CE of example i).

    reduce(name, buffer), if given, turns each buffer into what is kept (e.g. a bf16 score) as soon as
    its pass ends, so with layers_per_pass only one pass's fp32 buffers exist at a time."""
    params = params if params is not None else scored_parameters(model)
    n_ex = n_examples(batches)
    if n_ex == 0:
        raise LabError("calibration batches contain no response tokens")
    dev = model_device(model)
    impl = _choose_impl(model, list(params), impl)
    mods = scored_modules(model, include_embeddings=True, include_lm_head=True)
    out: dict[str, torch.Tensor] = {}
    groups = layer_groups(list(params), layers_per_pass)
    with _Frozen(model):
        for gi, group in enumerate(groups):
            bufs = {n: torch.zeros(params[n].shape, dtype=torch.float32, device=params[n].device) for n in group}
            tag = f"pass {gi + 1}/{len(groups)}"
            if impl == "outer":
                _outer_pass(model, {n: mods[n] for n in group}, bufs, batches, 1.0 / n_ex, dev, progress, tag)
            else:
                _microbatch_pass(model, {n: params[n] for n in group}, bufs, batches, 1.0 / n_ex, dev, progress, tag)
            for n in group:
                b = bufs.pop(n)
                out[n] = reduce(n, b) if reduce is not None else b
                del b
    return {n: out[n] for n in params}


def times_abs(factor: Callable[[str], torch.Tensor], score_dtype: torch.dtype):
    """reduce(name, buf) = buf ⊙ factor(name), in place, stored in score_dtype."""
    def reduce(name, buf):
        buf.mul_(factor(name))  # (out, in): |W| (or |ΔW|) ⊙ accumulated gradient term
        return buf if score_dtype == torch.float32 else buf.to(score_dtype)
    return reduce


def snip_scores(model: nn.Module, batches: Sequence[dict], *, params: dict[str, nn.Parameter] | None = None,
                layers_per_pass: int | None = None, score_dtype: torch.dtype = torch.float32, impl: str = "auto",
                progress: Callable[[str], None] | None = None) -> dict[str, torch.Tensor]:
    """Wei et al.'s SNIP: |W| ⊙ Σᵢ wᵢ |∇_W ℓᵢ| (per-example absolute gradients; see the module docstring)."""
    params = params if params is not None else scored_parameters(model)
    return abs_grad_sums(model, batches, params=params, layers_per_pass=layers_per_pass, impl=impl,
                         reduce=times_abs(lambda n: params[n].detach().abs(), score_dtype), progress=progress)


def snip_pooled_scores(model: nn.Module, batches: Sequence[dict], *, params: dict[str, nn.Parameter] | None = None,
                       layers_per_pass: int | None = None, score_dtype: torch.dtype = torch.float32,
                       progress: Callable[[str], None] | None = None) -> dict[str, torch.Tensor]:
    """|W ⊙ ∂L/∂W| with L the (loss_weight-weighted) token-mean response CE over all batches.

    Gradients are accumulated in place into one fp32 buffer per matrix by a post-accumulate-grad hook
    that frees `.grad` at once; layers_per_pass=k keeps buffers for k blocks at a time."""
    params = params if params is not None else scored_parameters(model)
    n_tok = n_loss_tokens(batches)
    if n_tok == 0:
        raise LabError("calibration batches contain no response tokens")
    dev = model_device(model)
    scores: dict[str, torch.Tensor] = {}
    groups = layer_groups(list(params), layers_per_pass)
    with _Frozen(model):
        for gi, group in enumerate(groups):
            bufs, handles = {}, []
            for name in group:
                p = params[name]
                p.requires_grad_(True)
                buf = bufs[name] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)

                def hook(param, buf=buf):
                    buf.add_(param.grad)
                    param.grad = None
                handles.append(p.register_post_accumulate_grad_hook(hook))
            for bi, batch in enumerate(batches):
                loss = response_loss_sum(model, to_device(batch, dev)) * token_weight(batch, 1.0 / n_tok)
                loss.backward()
                del loss
                if progress:
                    progress(f"snip-pooled pass {gi + 1}/{len(groups)} batch {bi + 1}/{len(batches)}")
            for h in handles:
                h.remove()
            for name in group:
                params[name].requires_grad_(False)
                s = bufs.pop(name)
                s.mul_(params[name].detach()).abs_()  # (out, in): |W ⊙ ∇_W L|
                scores[name] = s if score_dtype == torch.float32 else s.to(score_dtype)
    return {n: scores[n] for n in params}
