"""Generation: greedy by default, n samples per prompt on request.

Two engines, the same outputs for greedy decoding (tested on the organism, `tests/test_generate_speed.py`):

- "compact" (greedy): one stream of prompts sorted by token length, left-padded batches, the model's KV
  cache, and a row leaves the batch (and its cache) as soon as it stops, so a batch stops paying for
  finished answers. On full-attention caches each layer's keys and values live in a buffer with spare
  columns (`GrowingLayer`): a decode step writes its position in place instead of `torch.cat`-ing the
  whole cache, and a finished row's slot is refilled by moving a live row from the end of the batch.
  Every prompt may have its own `max_new_tokens`, so one stream can mix languages.
  The prompts of a batch are prefilled in length-sorted chunks (`prefill`), so short prompts do not pay
  for the longest one's padding.
- "hf": `transformers`' `generate` per length-sorted batch (finished rows stay in the batch until the
  longest answer ends). Used for sampling (temperature / top_p / seed) and kept as the reference path.

A row stops at any of the model's end-of-turn ids (`lab.models.eos_ids`: the generation config's whole
eos list plus the tokenizer's), at its `max_new_tokens`, or, with `repetition_stop=(n, k)`, when its
last n generated tokens have occurred k times in its answer (degenerate loops of real models).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from transformers.cache_utils import DynamicLayer

from lab.models import eos_ids

Engine = Literal["auto", "compact", "hf"]


@dataclass
class Generation:
    prompt: str
    rendered: str
    response: str
    truncated: bool  # stopped without an end-of-turn token (at max_new_tokens or by the repetition stop)
    sample: int = 0
    stop: str = ""  # "eos" | "length" | "repetition"
    new_tokens: int = 0


def render_prompts(tok, prompts: list[str], system: str | None = None) -> list[str]:
    """The exact model input: the tokenizer's chat template with the generation prompt appended.
    A system prompt on a template that rejects the system role (Gemma-2) is folded into the user turn."""
    from lab.models import chat_messages  # a system prompt is folded into the user turn where the template rejects it

    return [tok.apply_chat_template(chat_messages(tok, p, system), tokenize=False, add_generation_prompt=True)
            for p in prompts]


class _Repeats:
    """Per row: counts of the n-grams of the generated tokens; `add` says when the last one hit k."""

    def __init__(self, n: int, k: int):
        self.n, self.k, self.counts = n, k, {}

    def add(self, ids: list[int]) -> bool:
        if len(ids) < self.n:
            return False
        key = tuple(ids[-self.n:])
        c = self.counts[key] = self.counts.get(key, 0) + 1
        return c >= self.k


def _finish(tok, prompt, rendered, ids, stop_reason, sample=0) -> Generation:
    text = tok.decode(ids, skip_special_tokens=True).strip()
    return Generation(prompt, rendered, text, stop_reason != "eos", sample, stop_reason, len(ids))


def _replay(seq: list[int], budget: int, stop: set, repetition_stop) -> tuple[list[int], str]:
    """Where a generated sequence stops, by the compact engine's rules (the tokens after it are padding)."""
    reps = _Repeats(*repetition_stop) if repetition_stop else None
    ids: list[int] = []
    for t in seq:
        if t in stop:
            return ids, "eos"
        ids.append(t)
        if len(ids) >= budget:
            return ids, "length"
        if reps is not None and reps.add(ids):
            return ids, "repetition"
    return ids, "length"


def _budgets(max_new_tokens, n: int) -> list[int]:
    if isinstance(max_new_tokens, int):
        return [max_new_tokens] * n
    if len(max_new_tokens) != n:
        raise ValueError(f"max_new_tokens has {len(max_new_tokens)} items for {n} prompts")
    return [int(m) for m in max_new_tokens]


@torch.no_grad()
def generate(model, tok, prompts: list[str], *, system: str | None = None,
             max_new_tokens: int | Sequence[int] = 64, batch_size: int = 32, do_sample: bool = False,
             temperature: float = 1.0, top_p: float | None = None, num_samples: int = 1, seed: int = 0,
             stop_ids: Sequence[int] | None = None, repetition_stop: tuple[int, int] | None = None,
             engine: Engine = "auto", rendered: list[str] | None = None) -> list[Generation]:
    """Generate for every prompt; returns len(prompts) * num_samples Generations, prompt-major.

    max_new_tokens: one budget for all prompts or one per prompt. stop_ids: end-of-turn ids (default:
    the model's whole eos list). Sampling (do_sample, temperature, top_p) is seeded with `seed`.
    rendered: the prompts already rendered with the chat template (skips rendering).
    """
    rendered = rendered if rendered is not None else render_prompts(tok, prompts, system)
    stop = list(stop_ids) if stop_ids is not None else eos_ids(model, tok)
    budgets = _budgets(max_new_tokens, len(prompts))
    if engine == "auto":
        greedy = not do_sample and num_samples == 1
        engine = "compact" if greedy and not getattr(model.config, "is_encoder_decoder", False) else "hf"
    if engine == "compact":
        if do_sample or num_samples != 1:
            raise ValueError("the compact engine is greedy only (do_sample=False, num_samples=1); use engine='hf'")
        return _generate_compact(model, tok, prompts, rendered, budgets, stop, batch_size, repetition_stop)
    return _generate_hf(model, tok, prompts, rendered, budgets, stop, batch_size, do_sample, temperature, top_p,
                        num_samples, seed, repetition_stop)


IN_PLACE_CACHE = True  # False: the concatenating DynamicCache (for the benchmark's before/after)
PREFILL_CHUNK = 16  # rows per prefill forward (length-sorted; their caches are joined for decoding)


def _left_padded(seqs: list[list[int]], pad: int, dev) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    L = max(map(len, seqs))
    ids = torch.tensor([[pad] * (L - len(x)) + x for x in seqs], device=dev)
    att = torch.tensor([[0] * (L - len(x)) + [1] * len(x) for x in seqs], device=dev)
    return ids, att, (att.cumsum(-1) - 1).masked_fill(att == 0, 0)  # position ids as transformers' generate


def prefill(model, seqs: list[list[int]], pad: int, chunk: int = PREFILL_CHUNK):
    """Run length-sorted prompts through the model: (last logits (B, V), KV cache, attention mask, positions),
    all left-padded to the longest prompt. Rows go through in chunks of `chunk` rows, so a short prompt does
    not pay for the longest one's padding (a batch of SmolLM2's chat prompts was half padding: prefill 58 s
    -> ~36 s, the same answers); the chunks' caches are left-padded with zeros (masked out) and joined.
    Where a cache layer is not a plain full-attention DynamicLayer (sliding windows): one forward."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    dev = next(model.parameters()).device
    ids, att, pos = _left_padded(seqs, pad, dev)

    def forward(ids, att, pos):
        cache = DynamicCache(config=model.config)
        logits = model(input_ids=ids, attention_mask=att, position_ids=pos, past_key_values=cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1, :]
        return logits, cache

    if len(seqs) <= chunk:
        return (*forward(ids, att, pos), att, pos)
    parts = [forward(*_left_padded(seqs[s:s + chunk], pad, dev)) for s in range(0, len(seqs), chunk)]
    caches = [c for _, c in parts]
    if not all(type(layer) is DynamicLayer for c in caches for layer in c.layers):
        return (*forward(ids, att, pos), att, pos)
    L, joined = ids.shape[1], caches[0]
    for li, layer in enumerate(joined.layers):
        for name in ("keys", "values"):
            ts = [getattr(c.layers[li], name) for c in caches]
            setattr(layer, name, torch.cat([torch.nn.functional.pad(t, (0, 0, L - t.shape[-2], 0)) for t in ts], 0))
    return torch.cat([lg for lg, _ in parts], 0), joined, att, pos


class GrowingLayer(DynamicLayer):
    """A full-attention cache layer whose keys and values are views into buffers with `grow` spare columns:
    `update` writes the new positions in place (a decode step no longer copies the whole cache, which was
    ~40 % of a step at batch 256); the buffers are reallocated once every `grow` steps. The views hold the
    same numbers in the same layout as the concatenated tensors, so attention computes the same values
    (the compact engine's answers are tested identical to one-at-a-time greedy)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, grow: int = 32):
        super().__init__()
        self.dtype, self.device, self.is_initialized, self.grow = keys.dtype, keys.device, True, grow
        self.length = keys.shape[-2]
        self._k, self._v = self._alloc(keys, 0), self._alloc(values, 0)
        self._view()

    def _alloc(self, x: torch.Tensor, need: int) -> torch.Tensor:
        b, h, t, d = x.shape
        buf = x.new_empty((b, h, t + max(self.grow, need), d))
        buf[:, :, :t] = x
        return buf

    def _view(self) -> None:
        self.keys, self.values = self._k[:, :, :self.length], self._v[:, :, :self.length]

    def update(self, key_states, value_states, *args, **kwargs):
        n = key_states.shape[-2]
        if self.length + n > self._k.shape[-2]:
            self._k, self._v = self._alloc(self.keys, n), self._alloc(self.values, n)
        self._k[:, :, self.length:self.length + n] = key_states
        self._v[:, :, self.length:self.length + n] = value_states
        self.length += n
        self._view()
        return self.keys, self.values

    def move_rows(self, dst: torch.Tensor, src: torch.Tensor, n: int) -> None:
        """Copy rows `src` into rows `dst`, then keep the first `n` rows."""
        if len(dst):
            self._k[dst, :, :self.length] = self._k[src, :, :self.length]
            self._v[dst, :, :self.length] = self._v[src, :, :self.length]
        self._k, self._v = self._k[:n], self._v[:n]
        self._view()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._k, self._v = self._k[indices], self._v[indices]
        self._view()


def _compact_slots(done: list[int], n_rows: int) -> list[int]:
    """After the rows `done` finish: which old row each of the first n_rows - len(done) slots holds. A finished
    row's slot below the new size takes a live row from above it, so only those rows are copied."""
    n, dead = n_rows - len(done), set(done)
    perm = list(range(n))
    for hole, src in zip([r for r in done if r < n], [r for r in range(n, n_rows) if r not in dead]):
        perm[hole] = src
    return perm


def _generate_compact(model, tok, prompts, rendered, budgets, stop, batch_size, repetition_stop) -> list[Generation]:
    dev = next(model.parameters()).device
    ids_all = tok(rendered, add_special_tokens=False)["input_ids"]
    order = sorted(range(len(prompts)), key=lambda i: len(ids_all[i]))  # stable: ties keep prompt order
    stop_set, pad = set(stop), tok.pad_token_id if tok.pad_token_id is not None else 0
    results: list[Generation | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        logits, cache, att, pos = prefill(model, [ids_all[i] for i in rows], pad)
        in_place = IN_PLACE_CACHE and all(type(layer) is DynamicLayer for layer in cache.layers)  # not sliding windows
        if in_place:
            cache.layers = [GrowingLayer(layer.keys, layer.values) for layer in cache.layers]
        nxt_pos = pos[:, -1:] + 1
        gens = [[] for _ in rows]
        reps = [_Repeats(*repetition_stop) for _ in rows] if repetition_stop else None
        while True:
            nxt = torch.argmax(logits.float(), dim=-1)
            done = []
            for r, t in enumerate(nxt.tolist()):
                g = gens[r]
                if t in stop_set:
                    reason = "eos"
                else:
                    g.append(t)
                    reason = ("length" if len(g) >= budgets[rows[r]] else
                              "repetition" if reps is not None and reps[r].add(g) else None)
                if reason is not None:
                    done.append(r)
                    i = rows[r]
                    results[i] = _finish(tok, prompts[i], rendered[i], g, reason)
            if len(done) == len(rows):
                break
            if done:  # finished rows leave the batch and the cache
                if in_place:
                    keep = _compact_slots(done, len(rows))
                    n = len(keep)
                    dst = [r for r in done if r < n]
                    dst_t = torch.tensor(dst, device=dev, dtype=torch.long)
                    src_t = torch.tensor([keep[r] for r in dst], device=dev, dtype=torch.long)
                    for layer in cache.layers:
                        layer.move_rows(dst_t, src_t, n)
                else:
                    dead = set(done)
                    keep = [r for r in range(len(rows)) if r not in dead]
                    cache.batch_select_indices(torch.tensor(keep, device=dev))
                sel = torch.tensor(keep, device=dev)
                att, nxt, nxt_pos = att[sel], nxt[sel], nxt_pos[sel]
                rows, gens = [rows[r] for r in keep], [gens[r] for r in keep]
                reps = [reps[r] for r in keep] if reps is not None else None
            att = torch.cat([att, att.new_ones((len(rows), 1))], dim=1)
            logits = model(input_ids=nxt[:, None], attention_mask=att, position_ids=nxt_pos, past_key_values=cache,
                           use_cache=True).logits[:, -1, :]
            nxt_pos = nxt_pos + 1
    return results


class _RepetitionCriteria:
    """transformers StoppingCriteria form of the repetition stop (for the hf engine)."""

    def __init__(self, prompt_len: int, n: int, k: int):
        self.p, self.n, self.k = prompt_len, n, k

    def __call__(self, input_ids, scores, **kw):
        new = input_ids[:, self.p:]
        if new.shape[1] < self.n:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        grams = new.unfold(1, self.n, 1)  # (B, T-n+1, n)
        hits = (grams == new[:, None, -self.n:]).all(-1).sum(-1)
        return hits >= self.k


def _generate_hf(model, tok, prompts, rendered, budgets, stop, batch_size, do_sample, temperature, top_p,
                 num_samples, seed, repetition_stop) -> list[Generation]:
    """transformers' generate per length-sorted batch (the pre-speed-work path, plus sampling settings)."""
    from transformers import StoppingCriteriaList

    order = sorted(range(len(prompts)), key=lambda i: len(rendered[i]))
    results: list[list[Generation] | None] = [None] * len(prompts)
    dev = next(model.parameters()).device
    if do_sample:
        torch.manual_seed(seed)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tok([rendered[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
        plen = enc["input_ids"].shape[1]
        crit = StoppingCriteriaList([_RepetitionCriteria(plen, *repetition_stop)]) if repetition_stop else None
        mnt = max(budgets[i] for i in idx)
        out = model.generate(
            **enc, max_new_tokens=mnt, do_sample=do_sample,
            temperature=temperature if do_sample else None, top_p=top_p if do_sample else None, top_k=None,
            num_return_sequences=num_samples, eos_token_id=stop, pad_token_id=tok.pad_token_id,
            stopping_criteria=crit,
        )
        new = out[:, plen:]  # (batch*num_samples, new_tokens)
        for row, seq in enumerate(new):
            i, s = idx[row // num_samples], row % num_samples
            ids, reason = _replay(seq.tolist(), budgets[i], set(stop), repetition_stop)
            results[i] = (results[i] or []) + [_finish(tok, prompts[i], rendered[i], ids, reason, s)]
    return [g for gens in results for g in gens]


def generate_one_at_a_time(model, tok, prompts: list[str], **kw) -> list[Generation]:
    """Reference path for the benchmark and the identity tests: transformers' generate, batch size 1."""
    return generate(model, tok, prompts, batch_size=1, engine="hf", **kw)
