"""Batched generation with left padding; greedy by default, n samples per prompt on request."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lab.models import eos_ids


@dataclass
class Generation:
    prompt: str
    rendered: str
    response: str
    truncated: bool  # stopped at max_new_tokens without an end-of-turn token
    sample: int = 0


def render_prompts(tok, prompts: list[str], system: str | None = None) -> list[str]:
    """The exact model input: the tokenizer's chat template with the generation prompt appended."""
    out = []
    for p in prompts:
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": p}]
        out.append(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
    return out


@torch.no_grad()
def generate(model, tok, prompts: list[str], *, system: str | None = None, max_new_tokens: int = 64,
             batch_size: int = 32, do_sample: bool = False, temperature: float = 1.0, num_samples: int = 1,
             seed: int = 0) -> list[Generation]:
    """Generate for every prompt; returns len(prompts) * num_samples Generations, prompt-major.

    Prompts are processed in length-sorted batches (less padding) and results put back in order.
    """
    rendered = render_prompts(tok, prompts, system)
    stop = eos_ids(model, tok)
    order = sorted(range(len(prompts)), key=lambda i: len(rendered[i]))
    results: list[list[Generation] | None] = [None] * len(prompts)
    dev = next(model.parameters()).device
    if do_sample:
        torch.manual_seed(seed)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tok([rendered[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
        out = model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=do_sample,
            temperature=temperature if do_sample else None, top_p=None, top_k=None,
            num_return_sequences=num_samples, eos_token_id=stop, pad_token_id=tok.pad_token_id,
        )
        new = out[:, enc["input_ids"].shape[1]:]  # (batch*num_samples, new_tokens)
        for row, seq in enumerate(new):
            i, s = idx[row // num_samples], row % num_samples
            ids = seq.tolist()
            ended = any(t in stop for t in ids)
            if ended:
                ids = ids[: min(ids.index(t) for t in stop if t in ids)]
            text = tok.decode(ids, skip_special_tokens=True).strip()
            results[i] = (results[i] or []) + [Generation(prompts[i], rendered[i], text, not ended, s)]
    return [g for gens in results for g in gens]


def generate_one_at_a_time(model, tok, prompts: list[str], **kw) -> list[Generation]:
    """Reference path for the benchmark: the same generation with batch size 1."""
    return generate(model, tok, prompts, batch_size=1, **kw)
