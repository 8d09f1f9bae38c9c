"""Calibration batches for attribution: chat-rendered {prompt, response} records, loss on the response.

Batches are right-padded dicts {input_ids, attention_mask, labels}; labels are -100 everywhere except
the assistant-response tokens (see `encode_chat`). Two optional weights ride along:

* `loss_weight` (scalar): weight of every response *token* of the batch — used by `snip-pooled`
  (token-mean loss) and by Wanda / ActSVD (weighted sums of squared inputs);
* `example_weight` (scalar): weight of every *example* of the batch — used by `snip` (Wei et al.'s
  per-example estimator, which sums one term per example).

`build_balanced_calibration` sets both so that every language counts the same; without them every
token (loss_weight 1/N_tokens) or every example (example_weight 1/N_examples) counts the same.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lab.errors import LabError


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
    """Right-padded calibration batches {input_ids, attention_mask, labels} from {prompt, response} records.

    Examples without a (shifted) response token are dropped."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    encoded = [encode_chat(tok, _field(r, "prompt"), _field(r, "response"), max_length) for r in records]
    encoded = [(i, l) for i, l in encoded if any(x != -100 for x in l[1:])]
    if not encoded:
        raise LabError("no calibration example has response tokens (empty data or max_length too small)")
    batches = []
    for b in range(0, len(encoded), batch_size):
        chunk = encoded[b:b + batch_size]
        T = max(len(i) for i, _ in chunk)
        ids = torch.full((len(chunk), T), pad, dtype=torch.long)  # (B, T)
        labels = torch.full((len(chunk), T), -100, dtype=torch.long)  # (B, T)
        att = torch.zeros((len(chunk), T), dtype=torch.long)  # (B, T)
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
    organism's Hindi has ~2x the tokens of English). Every batch of language l gets
    `loss_weight` = 1 / (n_languages x response tokens of l)  (token-level methods) and
    `example_weight` = 1 / (n_languages x examples of l)        (per-example SNIP),
    so each language contributes the mean over its own tokens / examples, and languages weigh the same.
    """
    groups = {l: build_calibration(tok, recs, **kw) for l, recs in records_by_lang.items() if recs}
    if not groups:
        raise LabError("no calibration records")
    out = []
    for l, batches in groups.items():
        n_tok, n_ex = n_loss_tokens(batches), n_examples(batches)
        for b in batches:
            b["loss_weight"] = torch.tensor(1.0 / (len(groups) * n_tok))
            b["example_weight"] = torch.tensor(1.0 / (len(groups) * n_ex))
            b["lang_tokens"] = torch.tensor(n_tok)
        out += batches
    return out


def n_loss_tokens(batches: Sequence[dict]) -> int:
    """Number of (shifted) response tokens the token-mean loss averages over."""
    return int(sum((b["labels"][:, 1:] != -100).sum().item() for b in batches))


def n_examples(batches: Sequence[dict]) -> int:
    """Number of examples with at least one (shifted) response token."""
    return int(sum(((b["labels"][:, 1:] != -100).sum(1) > 0).sum().item() for b in batches))


def token_weight(batch: dict, default: float) -> float:
    return float(batch["loss_weight"]) if "loss_weight" in batch else default


def example_weight(batch: dict, default: float) -> float:
    return float(batch["example_weight"]) if "example_weight" in batch else default


def response_loss_sum(model: nn.Module, batch: dict) -> torch.Tensor:
    """Sum of next-token cross-entropy over the batch's response tokens (fp32)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    logits = out.logits[:, :-1]  # (B, T-1, V)
    tgt = batch["labels"][:, 1:]  # (B, T-1)
    sel = tgt != -100
    return F.cross_entropy(logits[sel].float(), tgt[sel], reduction="sum")


def per_example_mean_losses(model: nn.Module, batch: dict) -> torch.Tensor:
    """(B,) token-mean response cross-entropy of each example (HF's `labels=` loss of a batch of one)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    logits = out.logits[:, :-1].float()  # (B, T-1, V)
    tgt = batch["labels"][:, 1:]  # (B, T-1)
    ce = F.cross_entropy(logits.transpose(1, 2), tgt.clamp_min(0), reduction="none")  # (B, T-1)
    sel = (tgt != -100).to(ce.dtype)  # (B, T-1)
    n = sel.sum(1)  # (B,)
    return (ce * sel).sum(1) / n.clamp_min(1)  # (B,)
