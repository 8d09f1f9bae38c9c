"""Peak-memory estimate for attribution, from the model config alone (`lab attribute --dry-run`).

The model is instantiated on the meta device (no weights are read or allocated), so the parameter
counts come from the real module tree of any architecture. The estimate is

  weights          P_total x bytes(model dtype)            (SIL: twice, the aligned and the attacked model)
  scores kept      P_scored x bytes(score dtype)          (all methods; SNIP: for passes already done)
  SNIP buffers     P_pass x 4                              (fp32 accumulators of one pass; also SIL)
  ActSVD Grams     Σ_layers min(d_in, d_out)² x 8          (float64; <= 2x an fp32 copy of the linear weights)
  transient        snip / sil: largest matrix x 8 (one per-example |g_iᵀx_i| + one |W|);
                   snip-pooled: largest x (bytes(dtype) + 4) (one .grad); actsvd: the largest layer's
                   decomposition, d_out·d_in·8·3 + d_in²·8·2
  activations      SNIP (both), SIL: saved for backward, per block ~ B·T·(18·h + 6·I)·b + eager attention
                   B·heads·T²·(2·b) ; plus logits B·T·V·(b + 12) (fp32 copy, log-softmax, grad)
                   Wanda, ActSVD: one block's forward ~ B·T·(4·h + 3·I)·b + B·heads·T²·b, plus logits B·T·V·b

with b = bytes of the model dtype, B = batch size, T = max tokens per example. It is an upper-bound
style estimate; benchmarks/attribution_memory.py prints it next to measured peaks.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

_BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}


@dataclass
class MemoryEstimate:
    method: str
    n_params: int
    n_scored: int
    weights: int
    scores: int
    buffers: int
    transient: int
    activations: int
    peak: int
    fp32_model: int

    @property
    def overhead(self) -> int:
        return self.peak - self.weights

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(overhead=self.overhead, peak_over_fp32=self.peak / self.fp32_model)
        return d

    def lines(self) -> list[str]:
        g = lambda x: f"{x / 2**30:8.3f} GiB"  # noqa: E731
        return [f"method {self.method}: {self.n_params:,} parameters, {self.n_scored:,} scored",
                f"  weights      {g(self.weights)}", f"  scores       {g(self.scores)}",
                f"  grad buffers {g(self.buffers)}", f"  transient    {g(self.transient)}",
                f"  activations  {g(self.activations)}",
                f"  peak (est.)  {g(self.peak)}  = {self.peak / self.fp32_model:.2f}x the fp32 model ({g(self.fp32_model).strip()})"]


def _cfg_get(cfg, *names, default=None):
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return v
    text = getattr(cfg, "text_config", None)
    if text is not None and text is not cfg:
        return _cfg_get(text, *names, default=default)
    return default


def meta_model(config):
    """Instantiate a model from its config on the meta device (no memory for weights)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def estimate_from_model(model, method: str, *, dtype: torch.dtype | None = None, batch_size: int = 8,
                        seq_len: int = 256, layers_per_pass: int | None = None,
                        score_dtype: torch.dtype = torch.float32, include_embeddings: bool = False,
                        include_lm_head: bool = False) -> MemoryEstimate:
    from lab.attribution.scores import layer_groups, scored_parameters

    cfg = model.config
    dtype = dtype or next(model.parameters()).dtype
    b = _BYTES.get(dtype, 4)
    sb = _BYTES.get(score_dtype, 4)
    seen, n_params = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n_params += p.numel()
    params = scored_parameters(model, include_embeddings=include_embeddings, include_lm_head=include_lm_head)
    sizes = {n: p.numel() for n, p in params.items()}
    n_scored = sum(sizes.values())
    largest = max(sizes.values())
    h = _cfg_get(cfg, "hidden_size", "n_embd", "d_model", default=1024)
    inter = _cfg_get(cfg, "intermediate_size", "n_inner", "ffn_dim", default=4 * h) or 4 * h
    heads = _cfg_get(cfg, "num_attention_heads", "n_head", default=8)
    n_layers = _cfg_get(cfg, "num_hidden_layers", "n_layer", default=1)
    vocab = _cfg_get(cfg, "vocab_size", default=32000)
    B, T = batch_size, seq_len
    weights = n_params * b
    scores = n_scored * sb
    buffers = 0
    if method in ("snip", "snip-pooled", "sil"):
        groups = layer_groups(list(sizes), layers_per_pass)
        p_pass = max(sum(sizes[n] for n in g) for g in groups)
        buffers = p_pass * 4
        if len(groups) == 1:
            scores = largest * sb if sb != 4 else 0  # scores are made in place from the buffers
        transient = largest * (b + 4) if method == "snip-pooled" else largest * 8
        act = n_layers * (B * T * (18 * h + 6 * inter) * b + B * heads * T * T * 2 * b) + B * T * vocab * (b + 12)
        if method == "sil":
            weights *= 2
    elif method == "actsvd":
        shapes = [tuple(p.shape) for p in params.values()]
        scores = 0  # subspaces V (d_out x r) are at most the Grams' size and replace them one by one
        buffers = sum(min(o, i) ** 2 * 8 for o, i in shapes)
        transient = max(o * i * 8 * 3 + i * i * 8 * 2 for o, i in shapes)
        act = B * T * (4 * h + 3 * inter) * b + B * heads * T * T * b + B * T * vocab * b
    elif method == "wanda":
        transient = largest * 8
        act = B * T * (4 * h + 3 * inter) * b + B * heads * T * T * b + B * T * vocab * b
    else:
        transient = largest * 4
        act = 0
    peak = weights + scores + buffers + transient + act
    return MemoryEstimate(method, n_params, n_scored, weights, scores, buffers, transient, act, peak, n_params * 4)


def estimate_peak(spec_or_config, method: str, **kw) -> MemoryEstimate:
    """Estimate from a model spec (hub id / path / zoo:NAME), a config, or a model."""
    from torch import nn

    if isinstance(spec_or_config, nn.Module):
        return estimate_from_model(spec_or_config, method, **kw)
    config = spec_or_config
    if isinstance(spec_or_config, str):
        from transformers import AutoConfig

        try:
            from lab.models import resolve
            path = resolve(spec_or_config)
        except ImportError:  # pragma: no cover
            path = spec_or_config
        config = AutoConfig.from_pretrained(path)
    kw.setdefault("dtype", torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    return estimate_from_model(meta_model(config), method, **kw)
