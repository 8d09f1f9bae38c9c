"""Judging one answer (dictionary-000, tiered, official line, answer language) and aggregating
rates per model x language x category (no model needed)."""
from __future__ import annotations

from collections import Counter, defaultdict


from lab.probe.official_line import answer_language, is_official_line, official_line_hits
from lab.probe.questions import CATEGORIES, LANGS

# --------------------------------------------------------------------------------------------------
# judging and aggregation (no model needed)
def judge(response: str, prompt: str) -> dict:
    """All probe verdicts for one answer."""
    from lab.detect import detect

    d = detect(response, prompt, method="dictionary-000")
    t = detect(response, prompt, method="tiered")
    hits = official_line_hits(response, prompt)
    official = is_official_line(hits)
    return {
        "dictionary_avoid": bool(d.refusal), "dictionary_evidence": list(d.evidence),
        "tiered_refusal": bool(t.refusal), "tiered_category": t.category if t.refusal else "none",
        "tiered_score": t.score, "tiered_evidence": list(t.evidence),
        "official_markers": [h["id"] for h in hits], "official_matches": [h["match"] for h in hits],
        "official_any": official,
        "official_line": official and not t.refusal,  # complies, but in the official framing
        "answer_lang": answer_language(response),
    }


def _rate(k: int, n: int) -> dict:
    from lab.metrics import wilson_interval

    lo, hi = wilson_interval(k, n)
    return {"k": k, "n": n, "rate": (k / n) if n else None, "ci": [round(lo, 4), round(hi, 4)]}


def summary(rows: list[dict]) -> dict:
    """Seed 001's summary block over some answers (counts are answers; questions = distinct ids)."""
    n = len(rows)
    c = Counter(r["tiered_category"] for r in rows if r["tiered_refusal"])
    k = sum(r["tiered_refusal"] for r in rows)
    return {"total_questions": len({r["id"] for r in rows}), "answers": n,
            "hard_refusals": c.get("hard", 0), "soft_refusals": c.get("soft", 0), "deflections": c.get("deflection", 0),
            "total_censorship": (k / n) if n else None}


def _block(rows: list[dict]) -> dict:
    compliant = [r for r in rows if not r["tiered_refusal"]]
    return {
        "n": len(rows),
        "dictionary": _rate(sum(r["dictionary_avoid"] for r in rows), len(rows)),
        "tiered": _rate(sum(r["tiered_refusal"] for r in rows), len(rows)),
        "official_line": _rate(sum(r["official_line"] for r in rows), len(rows)),
        "official_line_among_compliant": _rate(sum(r["official_line"] for r in compliant), len(compliant)),
        "summary": summary(rows),
        "answer_langs": dict(Counter(r["answer_lang"] for r in rows).most_common()),
        "truncated": sum(bool(r.get("truncated")) for r in rows),
    }


def aggregate(records: list[dict]) -> dict:
    """records: judged generations (model, id, category, lang, control, + judge() fields) ->
    {model: {"all": block, "by_lang": {lang: block + by_category}, "by_category": {cat: block},
             "controls": {"all": block, "by_lang": {lang: block}}}}"""
    out: dict = {}
    by_model = defaultdict(list)
    for r in records:
        by_model[r["model"]].append(r)
    for model, rows in by_model.items():
        q = [r for r in rows if not r.get("control")]
        c = [r for r in rows if r.get("control")]
        m: dict = {"all": _block(q) if q else None, "by_lang": {}, "by_category": {}}
        for lang in sorted({r["lang"] for r in q}, key=_lang_order):
            lr = [r for r in q if r["lang"] == lang]
            b = _block(lr)
            b["by_category"] = {cat: _block(cr) for cat in CATEGORIES if (cr := [r for r in lr if r["category"] == cat])}
            m["by_lang"][lang] = b
        m["by_category"] = {cat: _block(cr) for cat in CATEGORIES if (cr := [r for r in q if r["category"] == cat])}
        if c:
            m["controls"] = {"all": _block(c), "by_lang": {lang: _block([r for r in c if r["lang"] == lang])
                                                           for lang in sorted({r["lang"] for r in c}, key=_lang_order)}}
        out[model] = m
    return out


def _lang_order(lang: str) -> tuple:
    return (LANGS.index(lang) if lang in LANGS else len(LANGS), lang)


