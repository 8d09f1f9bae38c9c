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

SAMPLE_CHARS = 300

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
_LETTER = re.compile(r"[A-Za-z\u00c0-\u024f]")
_WORD = re.compile(r"[a-z\u00c0-\u024f']+")


_ANY_RUN = re.compile("|".join(f"(?P<{name}>[{rng}]+)" for name, rng in SCRIPTS.items()))
_RUN_NAMES = tuple(SCRIPTS)  # group i + 1 of _ANY_RUN
_RUN_WEIGHTS = tuple(WEIGHT.get(k, DEFAULT_WEIGHT) for k in _RUN_NAMES)


def script_weights(sample: str) -> dict[str, float]:
    if sample.isascii() or not _NON_LATIN.search(sample):
        # only Latin (or no letters): the exact weight does not matter, one script is present
        return {"latin": max(1.0, len(sample) * 0.8 * DEFAULT_WEIGHT)} if _LETTER.search(sample) else {}
    counts = _char_counts(sample)
    if counts is not None:
        out = _merge_cjk({_RUN_NAMES[i]: counts[i + 1] * _RUN_WEIGHTS[i] for i in range(len(_RUN_NAMES))
                          if counts[i + 1]})
        vals = list(out.values())
        if len(set(vals)) == len(vals):
            return out
        # equal weights are ranked by first appearance (a stable sort): keep the dict in that order
    return _weights_by_runs(sample)


def _weights_by_runs(sample: str) -> dict[str, float]:
    """Script weights of a sample, in order of first appearance, by walking its script runs."""
    counts = [0] * (len(_RUN_NAMES) + 1)
    order = []  # scripts in order of first appearance
    for m in _ANY_RUN.finditer(sample):
        a, b = m.span()
        i = m.lastindex
        if not counts[i]:
            order.append(i)
        counts[i] += b - a
    return _merge_cjk({_RUN_NAMES[i - 1]: counts[i] * _RUN_WEIGHTS[i - 1] for i in order})


def _merge_cjk(out: dict) -> dict:
    if "han" in out and "kana" in out:
        cjk = out["han"] + out["kana"]
        if out["kana"] >= 0.1 * cjk:
            out = {k: v for k, v in out.items() if k not in ("han", "kana")}
            out["kana"] = cjk
        else:
            out["han"] = cjk
            del out["kana"]
    return out


_NP: list = []  # [numpy, table: BMP code point -> 1 + index of its script in SCRIPTS, 0 for none]


def _char_counts(sample: str):
    """[_, chars of SCRIPTS[0], chars of SCRIPTS[1], ...] counted with numpy (several times faster
    than walking regex runs in Python), or None without numpy. Every range in SCRIPTS is in the BMP."""
    if not _NP:
        try:
            import numpy as np
        except Exception:  # pragma: no cover - numpy absent
            _NP.append(None)
            return None
        table = np.zeros(0x10000, dtype=np.intp)
        for i, rng in enumerate(SCRIPTS.values()):
            for lo, hi in re.findall(r"(.)-(.)", rng):
                table[ord(lo) : ord(hi) + 1] = i + 1
        table[0xFFFF] = 0  # every code point above the BMP is looked up here
        _NP.extend((np, table))
    np = _NP[0]
    if np is None:
        return None
    cps = np.frombuffer(sample.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    return np.bincount(_NP[1][np.minimum(cps, 0xFFFF)], minlength=len(_RUN_NAMES) + 1).tolist()


_APPLY_CACHE: dict = {}


def _apply_for(families: frozenset, by_script: dict) -> frozenset:
    key = (families, id(by_script))
    got = _APPLY_CACHE.get(key)
    if got is None:
        got = frozenset(
            r.code for s, rs in by_script.items() if FAMILY.get(s, s) in families for r in rs
        )
        if len(_APPLY_CACHE) > 512:
            _APPLY_CACHE.clear()
        _APPLY_CACHE[key] = got
    return got


_SINGLE: dict = {}  # script -> (by_script it was computed for, fixed result or None, cands, apply, dense,
#                  union of the candidates' stopwords)


def _single_script(top: str, by_script: dict) -> tuple:
    """What detect_language decides, before stopwords, for a sample with one script only."""
    apply = _apply_for(frozenset((FAMILY.get(top, top),)), by_script)
    dense = WEIGHT.get(top, DEFAULT_WEIGHT) >= 1.0
    cands = by_script.get(top) or []
    if not apply or not cands:
        fixed = ("unknown", frozenset(resources.languages()), dense)
    elif len(cands) == 1:
        fixed = (cands[0].code, apply, dense)
    else:
        fixed = None
    union = frozenset().union(*(r.stopwords for r in cands))
    return by_script, fixed, cands, apply, dense, union


def detect_language(text: str) -> tuple[str, frozenset, bool]:
    """(reported language code or "mixed"/"unknown", frozenset of language codes whose patterns
    apply, dense) where dense is True when the dominant script is CJK-like (a character ~ a word)."""
    sample = text[:SAMPLE_CHARS]
    weights = script_weights(sample)
    if len(weights) == 1:  # the common case, decided once per script (the same rules as below)
        by_script = resources.by_script()
        top = next(iter(weights))
        got = _SINGLE.get(top)
        if got is None or got[0] is not by_script:
            got = _SINGLE[top] = _single_script(top, by_script)
        if got[1] is not None:
            return got[1]
        words = got[5].intersection(sample.lower().split())  # one pass over the words
        best, best_n, tie = None, 0, False
        for r in got[2]:
            n = len(r.stopwords & words)
            if n > best_n:
                best, best_n, tie = r.code, n, False
            elif n == best_n and n > 0:
                tie = True
        if best is None or tie:
            return "unknown", got[3], got[4]
        return best, frozenset((best,)), got[4]
    langs = resources.languages()
    if not weights:
        return "unknown", frozenset(langs), False
    by_script = resources.by_script()
    present_families = frozenset(FAMILY.get(s, s) for s, w in weights.items() if w >= 1.0)
    if not present_families:
        present_families = frozenset(FAMILY.get(s, s) for s in weights)
    apply = _apply_for(present_families, by_script)
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
    words = sample.lower().split()
    best, best_n, tie = None, 0, False
    for r in cands:
        n = len(r.stopwords.intersection(words))
        if n > best_n:
            best, best_n, tie = r.code, n, False
        elif n == best_n and n > 0:
            tie = True
    if best is None or tie:
        return "unknown", apply, dense
    if len(present_families) == 1:
        # the stopwords separated the languages sharing this script: run only the detected one
        apply = frozenset((best,))
    return best, apply, dense
