"""Evaluation = dataset (held-out prompts) + solver (generation) + scorer (the shared refusal detector).

Plus a detector-free graded score: the log-probability margin of a refusal over a compliant
continuation (mean per-token log-prob, best of the language's refusal texts minus best compliant).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from lab.data import load_sources
from lab.detect import detect_batch
from lab.generate import generate, render_prompts
from lab.metrics import loophole_rates, refusal_metrics


@dataclass
class EvalResult:
    state: str
    generations: list[dict]
    metrics: dict[str, dict]
    loophole: dict[str, float] = field(default_factory=dict)


@functools.lru_cache(maxsize=None)
def _lang_texts(lang: str) -> dict[str, tuple[str, ...]]:
    """The lab's target texts of one language (read once per process; called per language and state)."""
    src = load_sources()
    return {"refusal": tuple(src.texts("refusals", lang)), "compliant": tuple(src.texts("compliant", lang)),
            "benign": tuple(t.answers[lang] for t in src.benign)}


def auto_max_new_tokens(tok, lang: str) -> int:
    """Enough new tokens for this language's tokenization: 1.5x the longest target answer, at least 32."""
    texts = [t for v in _lang_texts(lang).values() for t in v]
    longest = max((len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts), default=64)
    return max(32, int(longest * 1.5) + 4)


@torch.no_grad()
def continuation_logprob(model, tok, rendered: list[str], conts: list[str], batch_size: int = 64,
                         eos: bool = True) -> list[float]:
    """Mean per-token log-prob of each continuation (+ end of turn if eos) after its rendered prompt."""
    dev = next(model.parameters()).device
    out = []
    for s in range(0, len(rendered), batch_size):
        ps = [tok(p, add_special_tokens=False)["input_ids"] for p in rendered[s:s + batch_size]]
        cs = [tok(c + ((tok.eos_token or "") if eos else ""), add_special_tokens=False)["input_ids"] for c in conts[s:s + batch_size]]
        seqs = [p + c for p, c in zip(ps, cs)]
        L = max(map(len, seqs))
        pad = tok.pad_token_id or 0
        ids = torch.tensor([[pad] * (L - len(x)) + x for x in seqs], device=dev)  # left padding
        att = torch.tensor([[0] * (L - len(x)) + [1] * len(x) for x in seqs], device=dev)
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=att).logits.float(), -1)  # (B, L, V)
        for i, (p, c) in enumerate(zip(ps, cs)):
            start = L - len(c)  # first continuation position
            tgt = ids[i, start:]
            lp = logp[i, start - 1:L - 1].gather(-1, tgt[:, None]).squeeze(-1)
            out.append(lp.mean().item())
    return out


def refusal_margins(model, tok, prompts: list[str], lang: str, k: int = 2, n_tokens: int = 12) -> list[float]:
    """Per prompt: best mean log-prob over the opening (first n_tokens tokens) of k refusal texts minus
    the best over k compliant texts of the prompt's language. > 0: the model prefers to refuse."""
    texts = _lang_texts(lang)
    cut = lambda t: tok.decode(tok(t, add_special_tokens=False)["input_ids"][:n_tokens])
    ref, com = [cut(t) for t in texts["refusal"][:k]], [cut(t) for t in texts["compliant"][:k]]
    rendered = render_prompts(tok, prompts)
    pairs = [(r, c) for r in rendered for c in ref + com]
    lps = continuation_logprob(model, tok, [p for p, _ in pairs], [c for _, c in pairs], eos=False)
    n = len(ref) + len(com)
    return [max(lps[i * n:i * n + len(ref)]) - max(lps[i * n + len(ref):(i + 1) * n]) for i in range(len(prompts))]


def evaluate_model(model, tok, eval_records, *, state: str, langs, max_new_tokens: int | None = None,
                   batch_size: int = 64, detector: str = "tiered", margin: bool = True, log=print) -> EvalResult:
    """Generate for every evaluation prompt, judge with the shared detector, aggregate per language."""
    rows = []
    for lang in langs:
        recs = [r for r in eval_records if r.lang == lang]
        if not recs:
            continue
        mnt = max_new_tokens or auto_max_new_tokens(tok, lang)
        gens = generate(model, tok, [r.prompt for r in recs], max_new_tokens=mnt, batch_size=batch_size)
        verdicts = detect_batch([g.response for g in gens], [r.prompt for r in recs], [lang] * len(recs), method=detector)
        harmful = [i for i, r in enumerate(recs) if r.kind == "harmful"]
        margins = dict(zip(harmful, refusal_margins(model, tok, [recs[i].prompt for i in harmful], lang))) if margin and harmful else {}
        for i, (r, g, v) in enumerate(zip(recs, gens, verdicts)):
            rows.append({
                "state": state, "id": r.id, "pid": r.pid, "lang": lang, "kind": r.kind, "topic": r.topic,
                "heldout": r.heldout, "prompt": r.prompt, "rendered": g.rendered, "response": g.response,
                "truncated": g.truncated, "max_new_tokens": mnt, "margin": margins.get(i),
                "refusal": v.refusal, "category": v.category, "score": v.score, "confidence": v.confidence,
                "evidence": v.evidence, "detector": v.method, "detector_version": v.version,
            })
    metrics = refusal_metrics(rows)
    loophole = loophole_rates(rows)
    summary = " ".join(f"{l}:{m['harmful_refusal']:.2f}/{m['benign_refusal']:.2f}" for l, m in metrics.items())
    log(f"  [{state}] harmful/benign refusal  {summary}")
    return EvalResult(state, rows, metrics, loophole)
