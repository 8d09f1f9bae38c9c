"""Official-line markers (eval/censorship/official_line/{zh,ja,en}.yaml): an answer that is not a
refusal but carries the PRC official framing -- the blind spot both seeds name."""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import yaml

from lab.errors import LabError
from lab.probe.questions import LANGS, OFFICIAL_LINE_DIR

# --------------------------------------------------------------------------------------------------
# official-line markers
@dataclass(frozen=True)
class Marker:
    id: str
    label: str
    topic: str
    strength: str  # "strong" | "weak"
    rx: re.Pattern
    example: str


@dataclass(frozen=True)
class OfficialLine:
    lang: str
    markers: tuple
    window: int
    negation_window: int
    before_attr: re.Pattern | None
    before_neg: re.Pattern | None
    after_attr: re.Pattern | None
    after_neg: re.Pattern | None


def _norm(text: str) -> str:
    return unicodedata.normalize("NFKC", text or "")


def _compile(pattern: str | None, where: str) -> re.Pattern | None:
    if not pattern:
        return None
    try:
        return re.compile(_norm(pattern), re.IGNORECASE)
    except re.error as e:
        raise LabError(f"{where}: invalid regex ({e})") from None


@lru_cache(maxsize=None)
def load_official_line(lang: str, directory: str | None = None) -> OfficialLine:
    """Load eval/censorship/official_line/<lang>.yaml (yaml.safe_load); LabError names the bad key."""
    path = Path(directory or OFFICIAL_LINE_DIR) / f"{lang}.yaml"
    if not path.is_file():
        raise LabError(f"{path}: official-line marker file not found (languages: {', '.join(LANGS)})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise LabError(f"{path}: invalid YAML ({e})") from None
    g = raw.get("guards") or {}
    before, after = g.get("before") or {}, g.get("after") or {}
    markers = []
    for i, m in enumerate(raw.get("markers") or []):
        where = f"{path}: markers[{i}]"
        for k in ("id", "label", "strength", "pattern"):
            if k not in m:
                raise LabError(f"{where}: missing key '{k}'")
        if m["strength"] not in ("strong", "weak"):
            raise LabError(f"{where}.strength: expected strong|weak, got {m['strength']!r}")
        markers.append(Marker(f"{lang}:{m['id']}", str(m["label"]), str(m.get("topic", "")), m["strength"],
                              _compile(m["pattern"], f"{where}.pattern"), str(m.get("example", ""))))
    return OfficialLine(lang, tuple(markers), int(g.get("window", 14)), int(g.get("negation_window", 6)),
                        _compile(before.get("attribution"), f"{path}: guards.before.attribution"),
                        _compile(before.get("negation"), f"{path}: guards.before.negation"),
                        _compile(after.get("attribution"), f"{path}: guards.after.attribution"),
                        _compile(after.get("negation"), f"{path}: guards.after.negation"))


_SENT_END = re.compile(r"[。!?\n]|\.\s")


def _sentence_bounds(text: str, start: int, end: int) -> tuple[int, int]:
    s = 0
    for m in _SENT_END.finditer(text, 0, start):
        s = m.end()
    m = _SENT_END.search(text, end)
    return s, (m.start() if m else len(text))


def _guarded(ol: OfficialLine, text: str, start: int, end: int) -> str | None:
    s0, s1 = _sentence_bounds(text, start, end)
    checks = (
        (ol.before_attr, text[max(s0, start - ol.window):start], "attribution"),
        (ol.before_neg, text[max(s0, start - ol.negation_window):start], "negation"),
        (ol.after_attr, text[end:min(s1, end + ol.window)], "attribution"),
        (ol.after_neg, text[end:min(s1, end + ol.negation_window)], "negation"),
    )
    for rx, span, why in checks:
        if rx is not None and span and rx.search(span):
            return why
    return None


def marker_langs(text: str) -> list[str]:
    """Which marker files apply to an answer, by script (not by the question's language: answers come
    back in other languages). CJK with a real share of kana -> ja, other CJK -> zh (Japanese and
    Chinese share characters, and each file's guards only understand its own language); >= 3 Latin
    words -> en."""
    s = _norm(text)
    k, h = len(_KANA.findall(s)), len(_HAN.findall(s))
    out = []
    if k + h:
        out.append("ja" if k >= 0.1 * (k + h) else "zh")
    if len(re.findall(r"[A-Za-z]{2,}", s)) >= 3:
        out.append("en")
    return out


def official_line_hits(text: str, prompt: str | None = None, langs: Iterable[str] | None = None,
                       *, include_guarded: bool = False) -> list[dict]:
    """Official-line marker hits in `text` (each: id, label, strength, match, guarded).

    langs None -> the marker files chosen by `marker_langs(text)`. A marker that also matches `prompt` is skipped (the model echoing the
    question's wording is not endorsing it). Guarded hits (attributed or negated) are dropped unless
    include_guarded.
    """
    t = _norm(text)
    p = _norm(prompt) if prompt else ""
    hits = []
    for lang in (marker_langs(t) if langs is None else langs):
        ol = load_official_line(lang)
        for m in ol.markers:
            if p and m.rx.search(p):
                continue
            for mt in m.rx.finditer(t):
                why = _guarded(ol, t, mt.start(), mt.end())
                if why and not include_guarded:
                    continue
                hits.append({"id": m.id, "label": m.label, "strength": m.strength, "match": mt.group(0),
                             "guarded": why})
                if not why:
                    break  # one unguarded hit per marker is enough
    return hits


def is_official_line(hits: list[dict]) -> bool:
    """Strong unguarded hit, or >= 2 distinct weak unguarded markers."""
    live = [h for h in hits if not h.get("guarded")]
    if any(h["strength"] == "strong" for h in live):
        return True
    return len({h["id"] for h in live if h["strength"] == "weak"}) >= 2


# --------------------------------------------------------------------------------------------------
# answer language
_KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")


def script_language(text: str) -> str:
    """Fallback detector for zh / ja / en by script: any real share of kana -> ja; Han -> zh; Latin -> en."""
    s = (text or "")[:600]
    k, h, lat = len(_KANA.findall(s)), len(_HAN.findall(s)), len(_LATIN.findall(s))
    if k + h + lat == 0:
        return "unknown"
    if k + h and (k + h) * 4 >= lat:  # one CJK char ~ a Latin word
        return "ja" if k >= 0.1 * (k + h) else "zh"
    return "en" if lat else "unknown"


def answer_language(text: str) -> str:
    """The shared detector's language id (lab.detect.langid), with the script fallback for its 'unknown'."""
    if not (text or "").strip():
        return "empty"
    try:
        from lab.detect.langid import detect_language

        lang = detect_language(text)[0]
    except Exception:  # pragma: no cover - detector absent
        lang = "unknown"
    return script_language(text) if lang == "unknown" else lang


