"""Response language by script (Han / Kana / Devanagari / Latin / ...), Latin languages by stopwords.

Only the first SAMPLE_CHARS characters are inspected. Scripts are weighted so that one CJK
character counts about as much as a short Latin word. Rules:

* Han + Kana with any real share of kana (>= 10 % of CJK characters) -> script "kana" (Japanese);
  Han without kana -> "han" (Chinese).
* several languages share the winning script (en, it) -> the one with most stopword hits;
  none -> "unknown".
* a second script carrying >= 30 % of the weight -> "mixed".

`patterns_for` returns the languages whose patterns are applied: every language whose script
FAMILY occurs in the text (Han and Kana are one family, so zh and ja patterns both run on any
CJK text), or all languages when no known script is present.
"""
from __future__ import annotations

import re

from . import resources

SAMPLE_CHARS = 600

SCRIPTS = {
    "latin": "A-Za-z\u00c0-\u024f",
    "han": "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff",
    "kana": "\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f",
    "devanagari": "\u0900-\u097f\ua8e0-\ua8ff",
    "bengali": "\u0980-\u09ff",
    "tamil": "\u0b80-\u0bff",
    "thai": "\u0e00-\u0e7f",
    "hangul": "\uac00-\ud7af\u1100-\u11ff\u3130-\u318f",
    "cyrillic": "\u0400-\u04ff",
    "greek": "\u0370-\u03ff",
    "arabic": "\u0600-\u06ff\u0750-\u077f",
    "hebrew": "\u0590-\u05ff",
}
# weight of one character (a CJK character carries roughly a word; Latin words are ~5 letters)
WEIGHT = {"han": 1.0, "kana": 1.0, "hangul": 1.0, "thai": 0.3}
DEFAULT_WEIGHT = 0.22
FAMILY = {"han": "cjk", "kana": "cjk"}

_RUNS = {name: re.compile(f"[{rng}]+") for name, rng in SCRIPTS.items()}
_NON_LATIN = re.compile(r"[^\x00-\u024f\u2000-\u206f]")
_WORD = re.compile(r"[a-z\u00c0-\u024f']+")


def script_weights(sample: str) -> dict[str, float]:
    if not _NON_LATIN.search(sample):
        n = sum(len(r) for r in _RUNS["latin"].findall(sample))
        return {"latin": n * DEFAULT_WEIGHT} if n else {}
    out = {}
    for name, rx in _RUNS.items():
        runs = rx.findall(sample)
        if runs:
            out[name] = sum(len(r) for r in runs) * WEIGHT.get(name, DEFAULT_WEIGHT)
    if "han" in out and "kana" in out:
        cjk = out["han"] + out["kana"]
        if out["kana"] >= 0.1 * cjk:
            out = {k: v for k, v in out.items() if k not in ("han", "kana")}
            out["kana"] = cjk
        else:
            out["han"] = cjk
            del out["kana"]
    return out


def _by_script() -> dict[str, list]:
    by: dict[str, list] = {}
    for r in resources.languages().values():
        by.setdefault(r.script, []).append(r)
    return by


def detect_language(text: str) -> tuple[str, frozenset, bool]:
    """(reported language code or "mixed"/"unknown", frozenset of language codes whose patterns
    apply, dense) where dense is True when the dominant script is CJK-like (a character ~ a word)."""
    sample = text[:SAMPLE_CHARS]
    weights = script_weights(sample)
    langs = resources.languages()
    if not weights:
        return "unknown", frozenset(langs), False
    by_script = _by_script()
    present_families = {FAMILY.get(s, s) for s, w in weights.items() if w >= 1.0}
    if not present_families:
        present_families = {FAMILY.get(s, s) for s in weights}
    apply = frozenset(
        r.code for s, rs in by_script.items() if FAMILY.get(s, s) in present_families for r in rs
    )
    ranked = sorted(weights.items(), key=lambda kv: -kv[1])
    top, wtop = ranked[0]
    dense = WEIGHT.get(top, DEFAULT_WEIGHT) >= 1.0
    if not apply:  # a script no language file covers
        return "unknown", frozenset(langs), dense
    if len(ranked) > 1 and ranked[1][1] >= 0.3 * wtop and ranked[1][1] >= 3.0:
        return "mixed", apply, dense
    cands = by_script.get(top) or []
    if not cands:
        return "unknown", frozenset(langs), dense
    if len(cands) == 1:
        return cands[0].code, apply, dense
    words = set(_WORD.findall(sample.lower()))
    best, best_n, tie = None, 0, False
    for r in cands:
        n = len(words & r.stopwords)
        if n > best_n:
            best, best_n, tie = r.code, n, False
        elif n == best_n and n > 0:
            tie = True
    if best is None or tie:
        return "unknown", apply, dense
    return best, apply, dense
