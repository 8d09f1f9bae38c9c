"""Importance scores for every weight of every linear layer: SNIP, Wanda and a random control.

Conventions (shared by all three methods, tested in tests/test_attribution.py):

* Scored parameters are the `weight` of every `nn.Linear` in the model (attention and MLP, whatever
  their shapes: GQA k/v projections narrower than q are just matrices of their own shape), except the
  output head (`lm_head`) unless `include_lm_head=True`; input embeddings only with
  `include_embeddings=True`. Tied weights are scored once, under the first name met. Keys are
  parameter names as in `model.named_parameters()` ("model.layers.0.self_attn.q_proj.weight").
* Calibration batches are right-padded dicts {input_ids, attention_mask, labels}; labels are -100
  everywhere except the assistant-response tokens (see `build_calibration`).
* SNIP: S = |W ⊙ ∂L/∂W| where L = Σ_batches Σ_response-tokens CE / N_tokens, i.e. the gradient of the
  token-mean cross-entropy over the whole calibration set (independent of how it is batched). Batches
  may carry a `loss_weight` (see `build_balanced_calibration`: every language weighs the same); then
  L = Σ_batches loss_weight · Σ_response-tokens CE, and Wanda weighs its squared inputs the same way.
  Gradients are accumulated in place into one fp32 buffer per scored matrix by a
  post-accumulate-grad hook that frees `.grad` at once; no per-example gradients exist.
* Wanda: S_ij = |W_ij| · ‖X_j‖₂ where X stacks the layer's inputs at the response-token positions
  (positions t with labels[t] != -100) over all calibration batches. A forward pre-hook adds the
  squared inputs into one fp32 vector per layer (length in_features); activations are never stored.
* random: i.i.d. U(0,1) per weight from a generator seeded by (seed, parameter name) — the control.

Memory: see lab/attribution/memory.py and README.md ("Safety attribution") ("Scale").
"""
from __future__ import annotations

import re
import zlib
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lab.errors import LabError

METHODS = ("snip", "wanda", "random")
_LAYER_RE = re.compile(r"\.(\d+)\.")


# ------------------------------------------------------------------------------------ parameters


def scored_parameters(model: nn.Module, *, include_embeddings: bool = False,
                      include_lm_head: bool = False) -> dict[str, nn.Parameter]:
    """Name -> weight Parameter of every nn.Linear (and optionally embeddings / output head)."""
    return {name: mod.weight for name, mod in _scored_modules(model, include_embeddings, include_lm_head).items()}


def _scored_modules(model: nn.Module, include_embeddings: bool, include_lm_head: bool) -> dict[str, nn.Module]:
    get_out = getattr(model, "get_output_embeddings", None)
    out_emb = get_out() if callable(get_out) else None
    seen: set[int] = set()
    res: dict[str, nn.Module] = {}
    for mname, mod in model.named_modules():
        if "lora_" in mname:  # peft adapters are not part of the model being attributed
            continue
        if isinstance(mod, nn.Linear):
            if mod is out_emb and not include_lm_head:
                continue
        elif isinstance(mod, nn.Embedding):
            if not include_embeddings:
                continue
        else:
            continue
        w = mod.weight
        if id(w) in seen:
            continue
        seen.add(id(w))
        res[f"{mname}.weight" if mname else "weight"] = mod
    if not res:
        raise LabError("model has no nn.Linear layers to score")
    return res


def layer_index(name: str) -> int | None:
    """Index of the transformer block a parameter belongs to (first `.N.` in its name), else None."""
    m = _LAYER_RE.search("." + name)
    return int(m.group(1)) if m else None


def module_kind(name: str) -> str:
    """'self_attn.q_proj' for 'model.layers.3.self_attn.q_proj.weight'; the full name when not in a block."""
    n = name[:-len(".weight")] if name.endswith(".weight") else name
    m = _LAYER_RE.search("." + n + ".")
    if not m:
        return n
    return ("." + n + ".")[m.end():].strip(".") or n


def layer_groups(names: Sequence[str], layers_per_pass: int | None) -> list[list[str]]:
    """Split parameter names into passes of `layers_per_pass` consecutive blocks (None: one pass).

    Parameters outside numbered blocks (lm_head, embeddings) join the first pass.
    """
    names = list(names)
    if not layers_per_pass:
        return [names]
    if layers_per_pass < 1:
        raise LabError(f"layers_per_pass must be >= 1, got {layers_per_pass}")
    idx = sorted({i for i in (layer_index(n) for n in names) if i is not None})
    chunks = [idx[i:i + layers_per_pass] for i in range(0, len(idx), layers_per_pass)] or [[]]
    groups: list[list[str]] = [[] for _ in chunks]
    where = {layer: g for g, chunk in enumerate(chunks) for layer in chunk}
    for n in names:
        li = layer_index(n)
        groups[where[li] if li is not None else 0].append(n)
    return [g for g in groups if g]


# ------------------------------------------------------------------------------------ calibration data


def _field(rec, key: str) -> str:
    v = rec.get(key) if isinstance(rec, dict) else getattr(rec, key, None)
    if not isinstance(v, str):
        raise LabError(f"calibration record lacks a string '{key}': {str(rec)[:120]}")
    return v


def encode_chat(tok, prompt: str, response: str, max_length: int | None = None) -> tuple[list[int], list[int]]:
    """Token ids of the chat-rendered (prompt, response) and labels that are -100 except on the response.

    The response span is the suffix of the full rendering after the prompt-only rendering with
    add_generation_prompt=True (it includes the template's end-of-turn tokens, as in assistant-only
    SFT). If a template rewrites earlier turns so the prompt rendering is not a prefix, the span starts
    at the last occurrence of the response text. Token/char alignment uses offset mappings (fast
    tokenizers) or, failing that, prefix tokenization.
    """
    full = tok.apply_chat_template([{"role": "user", "content": prompt},
                                    {"role": "assistant", "content": response}], tokenize=False)
    head = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                   add_generation_prompt=True)
    if full.startswith(head):
        start = len(head)
    else:
        start = full.rfind(response) if response else -1
        if start < 0:
            raise LabError("cannot locate the assistant response in the chat template rendering "
                           f"(prompt {prompt[:60]!r})")
    try:
        enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        labels = [t if e > start else -100 for t, (s, e) in zip(ids, enc["offset_mapping"])]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        ids = list(tok(full, add_special_tokens=False)["input_ids"])
        n_head = len(tok(full[:start], add_special_tokens=False)["input_ids"])
        labels = [-100] * n_head + ids[n_head:]
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return ids, labels


def build_calibration(tok, records: Iterable, *, batch_size: int = 8, max_length: int | None = 256,
                      device: torch.device | str | None = None) -> list[dict[str, torch.Tensor]]:
    """Right-padded calibration batches {input_ids, attention_mask, labels} from {prompt, response} records."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    encoded = [encode_chat(tok, _field(r, "prompt"), _field(r, "response"), max_length) for r in records]
    encoded = [(i, l) for i, l in encoded if any(x != -100 for x in l)]
    if not encoded:
        raise LabError("no calibration example has response tokens (empty data or max_length too small)")
    batches = []
    for b in range(0, len(encoded), batch_size):
        chunk = encoded[b:b + batch_size]
        T = max(len(i) for i, _ in chunk)
        ids = torch.full((len(chunk), T), pad, dtype=torch.long)
        labels = torch.full((len(chunk), T), -100, dtype=torch.long)
        att = torch.zeros((len(chunk), T), dtype=torch.long)
        for k, (i, l) in enumerate(chunk):
            ids[k, :len(i)] = torch.tensor(i)
            labels[k, :len(l)] = torch.tensor(l)
            att[k, :len(i)] = 1
        batch = {"input_ids": ids, "attention_mask": att, "labels": labels}
        if device is not None:
            batch = {k: v.to(device) for k, v in batch.items()}
        batches.append(batch)
    return batches


def build_balanced_calibration(tok, records_by_lang: dict[str, list], **kw) -> list[dict[str, torch.Tensor]]:
    """Calibration batches for several languages, each weighted so that every language counts equally.

    A plain token mean over pooled data lets the language with the most response tokens dominate (the
    organism's Hindi has ~2x the tokens of English). Every batch gets `loss_weight` =
    1 / (n_languages x that language's response-token count), so SNIP's loss is the mean over languages
    of each language's token-mean loss, and Wanda's squared norms are the same language-balanced mean.
    """
    groups = {l: build_calibration(tok, recs, **kw) for l, recs in records_by_lang.items() if recs}
    if not groups:
        raise LabError("no calibration records")
    out = []
    for l, batches in groups.items():
        n = n_loss_tokens(batches)
        for b in batches:
            b["loss_weight"] = torch.tensor(1.0 / (len(groups) * n))
            b["lang_tokens"] = torch.tensor(n)
        out += batches
    return out


def n_loss_tokens(batches: Sequence[dict]) -> int:
    """Number of (shifted) response tokens the SNIP loss averages over."""
    return int(sum((b["labels"][:, 1:] != -100).sum().item() for b in batches))


def response_loss_sum(model: nn.Module, batch: dict) -> torch.Tensor:
    """Sum of next-token cross-entropy over the batch's response tokens (fp32)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    logits = out.logits[:, :-1]
    tgt = batch["labels"][:, 1:]
    sel = tgt != -100
    return F.cross_entropy(logits[sel].float(), tgt[sel], reduction="sum")


# ------------------------------------------------------------------------------------ scores


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _to(batch: dict, dev: torch.device) -> dict:
    return {k: v.to(dev) for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels")}


def snip_scores(model: nn.Module, batches: Sequence[dict], *, params: dict[str, nn.Parameter] | None = None,
                layers_per_pass: int | None = None, score_dtype: torch.dtype = torch.float32,
                progress: Callable[[str], None] | None = None) -> dict[str, torch.Tensor]:
    """SNIP scores |W ⊙ ∂L/∂W| (L = token-mean response CE over all batches), accumulated in place.

    layers_per_pass=k runs the calibration set once per k blocks, keeping fp32 gradient buffers for
    those blocks only (peak memory ~ model + k/L of the linear weights in fp32 + stored scores).
    """
    params = params if params is not None else scored_parameters(model)
    n_tok = n_loss_tokens(batches)
    if n_tok == 0:
        raise LabError("calibration batches contain no response tokens")
    dev = _model_device(model)
    was_training = model.training
    req = {n: p.requires_grad for n, p in model.named_parameters()}
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    scores: dict[str, torch.Tensor] = {}
    groups = layer_groups(list(params), layers_per_pass)
    try:
        for gi, group in enumerate(groups):
            bufs: dict[str, torch.Tensor] = {}
            handles = []
            for name in group:
                p = params[name]
                p.requires_grad_(True)
                p.grad = None
                buf = bufs[name] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)

                def hook(param, buf=buf):
                    buf.add_(param.grad)
                    param.grad = None
                handles.append(p.register_post_accumulate_grad_hook(hook))
            for bi, batch in enumerate(batches):
                w = float(batch["loss_weight"]) if "loss_weight" in batch else 1.0 / n_tok
                loss = response_loss_sum(model, _to(batch, dev)) * w
                loss.backward()
                del loss
                if progress:
                    progress(f"snip pass {gi + 1}/{len(groups)} batch {bi + 1}/{len(batches)}")
            for h in handles:
                h.remove()
            for name in group:
                p = params[name]
                p.requires_grad_(False)
                p.grad = None
                s = bufs.pop(name)
                s.mul_(p.detach()).abs_()
                scores[name] = s if score_dtype == torch.float32 else s.to(score_dtype)
                del s
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(req[n])
            p.grad = None
        model.train(was_training)
    return {n: scores[n] for n in params}


def _input_of(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    for k in ("input", "x", "hidden_states"):
        if k in kwargs:
            return kwargs[k]
    raise LabError("cannot find the input of a linear layer in its forward call")


def _select_rows(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if x.shape[:-1] == mask.shape:
        return x[mask]
    if x.shape[:-1].numel() == mask.numel():
        return x.reshape(-1, x.shape[-1])[mask.reshape(-1)]
    raise LabError(f"layer input of shape {tuple(x.shape)} does not align with the token mask "
                   f"{tuple(mask.shape)} (routed/MoE experts are not supported by Wanda here)")


def wanda_scores(model: nn.Module, batches: Sequence[dict], *, params: dict[str, nn.Parameter] | None = None,
                 include_embeddings: bool = False, include_lm_head: bool = False,
                 score_dtype: torch.dtype = torch.float32, row_chunk: int = 4096,
                 progress: Callable[[str], None] | None = None) -> dict[str, torch.Tensor]:
    """Wanda scores |W_ij| · ‖X_j‖₂ over response-token inputs; only per-feature sums of squares kept.

    For an nn.Embedding (include_embeddings=True) the input is one-hot, so ‖X_v‖₂ = sqrt(count of token
    v at response positions) and S[v, :] = |E[v, :]| · sqrt(count_v).
    """
    modules = _scored_modules(model, include_embeddings, include_lm_head)
    if params is not None:
        modules = {n: m for n, m in modules.items() if n in params}
    dev = _model_device(model)
    ctx: dict = {"mask": None, "w": 1.0}
    sumsq: dict[str, torch.Tensor] = {}
    handles = []
    for name, mod in modules.items():
        if isinstance(mod, nn.Embedding):
            acc = sumsq[name] = torch.zeros(mod.num_embeddings, dtype=torch.float32, device=mod.weight.device)

            def ehook(m, args, kwargs, acc=acc):
                ids = _select_rows(_input_of(args, kwargs).unsqueeze(-1), ctx["mask"]).reshape(-1)
                acc.add_(torch.bincount(ids, minlength=acc.numel()).to(acc), alpha=ctx["w"])
            handles.append(mod.register_forward_pre_hook(ehook, with_kwargs=True))
        else:
            acc = sumsq[name] = torch.zeros(mod.weight.shape[1], dtype=torch.float32, device=mod.weight.device)

            def lhook(m, args, kwargs, acc=acc):
                rows = _select_rows(_input_of(args, kwargs), ctx["mask"])
                for i in range(0, rows.shape[0], row_chunk):
                    acc.add_(rows[i:i + row_chunk].float().pow(2).sum(0), alpha=ctx["w"])
            handles.append(mod.register_forward_pre_hook(lhook, with_kwargs=True))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for bi, batch in enumerate(batches):
                batch = _to(batch, dev)
                ctx["mask"] = batch["labels"] != -100
                ctx["w"] = float(batch["loss_weight"]) if "loss_weight" in batch else 1.0
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
                if progress:
                    progress(f"wanda batch {bi + 1}/{len(batches)}")
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    scores = {}
    for name, mod in modules.items():
        norm = sumsq.pop(name).sqrt_()
        w = mod.weight.detach()
        if isinstance(mod, nn.Embedding):
            s = w.abs().float().mul_(norm[:, None])
        else:
            s = w.abs().float().mul_(norm[None, :])
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
    """Dispatch on method in {"snip", "wanda", "random"}."""
    params = scored_parameters(model, include_embeddings=include_embeddings, include_lm_head=include_lm_head)
    if method == "random":
        return random_scores(model, params=params, seed=seed, score_dtype=score_dtype)
    if not batches:
        raise LabError(f"method {method!r} needs calibration batches")
    if method == "snip":
        return snip_scores(model, batches, params=params, layers_per_pass=layers_per_pass,
                           score_dtype=score_dtype, progress=progress)
    if method == "wanda":
        return wanda_scores(model, batches, params=params, include_embeddings=include_embeddings,
                            include_lm_head=include_lm_head, score_dtype=score_dtype, progress=progress)
    raise LabError(f"unknown attribution method {method!r}; expected one of {', '.join(METHODS)}")
