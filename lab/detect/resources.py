"""Language resources: one YAML file per language in eval/detector/, loaded once and compiled.

Each file (``eval/detector/<code>.yaml``) holds::

    lang: en                 # language code reported in verdicts (defaults to the file stem)
    script: latin            # see lab.detect.langid.SCRIPTS (latin, han, kana, devanagari, hangul, ...)
    stopwords: [...]         # optional; separates languages that share a script (en vs it)
    hard: [...]              # explicit refusals, apology + refusal, policy citations, capability denials
    hard_weak: [...]         # refusal phrasing that only counts in the opening of a response
    deflection: [...]        # topic changes, "instead, let me ..."
    soft: {disclaimer: [...], hedging: [...], vagueness: [...]}
    pivot: [...]             # 'but here is general information': refusal then a real answer
    info: [...]              # educational / informational phrasing (false-positive filter)

Patterns are Python regular expressions matched against the LOWER-CASED response (write them in
lower case; capturing groups are turned into non-capturing ones). Dropping a new file into the
folder adds a language; no code changes.

For speed, all patterns of a set of languages are merged into ONE regex whose alternatives are
factored by their literal prefixes (a character trie), so the engine tries only the patterns that
can start at a position; every pattern keeps its own named group so a match maps back to its
language, category and subtype.
"""
from __future__ import annotations

import hashlib
import re
import threading
from functools import lru_cache
from pathlib import Path

import yaml

import lab

RESOURCE_DIR = Path(lab.__file__).resolve().parent.parent / "eval" / "detector"

SIGNAL_KINDS = ("hard", "hard_weak", "deflection", "disclaimer", "hedging", "vagueness", "pivot")
_META = set("\\.^$*+?{}[]|()")
_lock = threading.Lock()


class ResourceError(ValueError):
    """A language file in eval/detector/ is malformed (the message names the file and pattern)."""


def resource_files(directory: Path | None = None) -> list[Path]:
    d = Path(directory) if directory else RESOURCE_DIR
    return sorted(p for p in d.glob("*.yaml") if p.is_file())


def fingerprint(directory: Path | None = None) -> str:
    """Short hash of the language files, so a verdict records which patterns produced it."""
    h = hashlib.sha1()
    for p in resource_files(directory):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:8]


def _lower_pattern(p: str) -> str:
    """Lower-case a pattern's literals without touching escapes like \\S, \\D, \\W, \\B."""
    out, i = [], 0
    while i < len(p):
        c = p[i]
        if c == "\\" and i + 1 < len(p):
            out.append(p[i : i + 2])
            i += 2
            continue
        out.append(c.lower())
        i += 1
    return "".join(out)


def _noncapturing(p: str) -> str:
    return re.sub(r"(?<!\\)\((?!\?)", "(?:", p)


def _split_prefix(p: str) -> tuple[str, str]:
    """Split a pattern into its leading literal run and the rest (a quantified last char stays in the rest)."""
    i = 0
    while i < len(p) and p[i] not in _META:
        i += 1
    if i < len(p) and p[i] in "*+?{" and i > 0:
        i -= 1
    # a top-level alternation makes the prefix meaningless
    if "|" in _strip_groups(p):
        return "", p
    return p[:i], p[i:]


def _strip_groups(p: str) -> str:
    """The pattern with bracketed groups/classes removed (to look for top-level '|')."""
    depth, out, i, in_class = 0, [], 0, False
    while i < len(p):
        c = p[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
        elif c == "[":
            in_class = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif depth == 0:
            out.append(c)
        i += 1
    return "".join(out)


def _group_end(p: str, start: int) -> int:
    """Index of the ')' closing the group opened at p[start] ('('), or -1."""
    depth, i, in_class = 0, start, False
    while i < len(p):
        c = p[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
        elif c == "[":
            in_class = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _split_top(p: str) -> list[str]:
    """Split a regex on its top-level '|'."""
    parts, depth, i, in_class, last = [], 0, 0, False, 0
    while i < len(p):
        c = p[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
        elif c == "[":
            in_class = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            parts.append(p[last:i])
            last = i + 1
        i += 1
    parts.append(p[last:])
    return parts


def _expand(p: str, budget: int = 96) -> list[str]:
    """Distribute leading alternations so that every variant starts with a literal when possible:
    '(?:i'm|i am) sorry' -> ["i'm sorry", "i am sorry"]. Keeps the language of the pattern; the
    trie then lets the regex engine try only the variants whose first characters match."""
    tops = _split_top(p)
    if len(tops) > 1:
        out = []
        for t in tops:
            out.extend(_expand(t, max(1, budget // len(tops))))
        return out if len(out) <= budget else [p]
    if not p.startswith("(?:"):
        return [p]
    end = _group_end(p, 0)
    if end < 0:
        return [p]
    inner, rest = p[3:end], p[end + 1 :]
    optional = False
    if rest[:1] in ("*", "+", "{"):
        return [p]
    if rest[:1] == "?":
        if rest[1:2] in ("?", "+"):
            return [p]
        optional, rest = True, rest[1:]
    alts = _split_top(inner)
    if optional:
        alts.append("")
    if len(alts) > budget:
        return [p]
    out = []
    for a in alts:
        # keep each alternative grouped if it could bind to a following quantifier
        out.extend(_expand(a + rest, max(1, budget // len(alts))))
        if len(out) > budget:
            return [p]
    return out


def _trie_regex(items: list[tuple[str, str, str]]) -> str:
    """items: (group name, literal prefix, rest regex) -> one alternation factored by prefix."""
    root: dict = {}
    for name, prefix, rest in items:
        node = root
        for ch in prefix:
            node = node.setdefault(ch, {})
        node.setdefault("", []).append((name, rest))

    def emit(node: dict) -> str:
        alts = []
        for name, rest in node.get("", []):
            alts.append(f"(?P<{name}>{rest})")
        for ch in sorted(k for k in node if k):
            alts.append(re.escape(ch) + emit(node[ch]))
        if len(alts) == 1:
            return alts[0]
        return "(?:" + "|".join(alts) + ")"

    # leaves must come last in each node only when they are empty; ordering of alternatives is
    # leftmost-first, which is fine for detection (any match is a signal).
    return emit(root)


class LangResource:
    __slots__ = ("code", "script", "stopwords", "patterns", "info", "path")

    def __init__(self, code, script, stopwords, patterns, info, path):
        self.code = code
        self.script = script
        self.stopwords = stopwords
        self.patterns = patterns  # list of (kind, pattern)
        self.info = info
        self.path = path


def _load_file(path: Path) -> LangResource:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ResourceError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ResourceError(f"{path}: expected a mapping at top level")
    code = str(data.get("lang") or path.stem)
    script = str(data.get("script") or "unknown")
    stop = frozenset(str(w).lower() for w in (data.get("stopwords") or []))
    pats: list[tuple[str, str]] = []

    def add(kind, lst):
        for p in lst or []:
            if not isinstance(p, str) or not p:
                raise ResourceError(f"{path}: {kind}: patterns must be non-empty strings, got {p!r}")
            q = _noncapturing(_lower_pattern(p))
            try:
                re.compile(q)
            except re.error as e:
                raise ResourceError(f"{path}: {kind}: bad regex {p!r}: {e}") from None
            pats.append((kind, q))

    add("hard", data.get("hard"))
    add("hard_weak", data.get("hard_weak"))
    add("deflection", data.get("deflection"))
    add("pivot", data.get("pivot"))
    soft = data.get("soft") or {}
    if not isinstance(soft, dict):
        raise ResourceError(f"{path}: soft: expected a mapping of disclaimer/hedging/vagueness")
    for sub in ("disclaimer", "hedging", "vagueness"):
        add(sub, soft.get(sub))
    info = []
    for p in data.get("info") or []:
        q = _noncapturing(_lower_pattern(str(p)))
        try:
            re.compile(q)
        except re.error as e:
            raise ResourceError(f"{path}: info: bad regex {p!r}: {e}") from None
        info.append(q)
    return LangResource(code, script, stop, pats, info, path)


_RES: dict | None = None


def languages() -> dict[str, LangResource]:
    """All language resources, loaded once (thread-safe)."""
    global _RES
    if _RES is None:
        with _lock:
            if _RES is None:
                res = {}
                for p in resource_files():
                    r = _load_file(p)
                    res[r.code] = r
                _RES = res
    return _RES


def reload() -> None:
    """Forget loaded resources (tests and researchers editing the YAML files)."""
    global _RES
    with _lock:
        _RES = None
        compiled_for.cache_clear()


class Compiled:
    """Merged signal regexes and one info regex for a set of languages.

    `regexes` is a list of (regex, overlapping) to run on a window:
      * a word-start-gated trie (``\\b(?=...)``, zero-width, so matches may overlap) for patterns whose
        literal prefix starts with a Latin/Devanagari/... word character;
      * a trie for patterns starting with a CJK character (no gate: CJK has no word boundaries; the
        engine skips positions whose character cannot start any pattern);
      * the residual patterns without a usable literal prefix (zero-width, overlapping).
    Every pattern variant has its own named group: group name -> (lang, kind).
    """

    __slots__ = ("regexes", "group_meta", "info")

    def __init__(self, regexes, group_meta, info):
        self.regexes = regexes
        self.group_meta = group_meta
        self.info = info


_CJK_START = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\uff00-\uffef\u3000-\u303f]")


@lru_cache(maxsize=256)
def compiled_for(codes: frozenset) -> Compiled:
    res = languages()
    word_items, cjk_items, residual, meta, infos = [], [], [], {}, []
    n = 0
    for code in sorted(codes):
        r = res.get(code)
        if r is None:
            continue
        for kind, pat in r.patterns:
            for variant in _expand(pat):
                name = f"g{n}"
                n += 1
                meta[name] = (code, kind)
                pre, rest = _split_prefix(variant)
                if pre and _CJK_START.match(pre[0]):
                    cjk_items.append((name, pre, rest))
                elif pre and (pre[0].isalnum() or pre[0] == "_"):
                    word_items.append((name, pre, rest))
                else:
                    residual.append(f"(?P<{name}>{variant})")
        infos.extend(r.info)
    regexes = []
    if word_items:
        regexes.append((re.compile(r"\b(?=" + _trie_regex(word_items) + ")"), True))
    if cjk_items:
        regexes.append((re.compile(_trie_regex(cjk_items)), False))
    if residual:
        regexes.append((re.compile("(?=(?:" + "|".join(residual) + "))"), True))
    info = re.compile("|".join(f"(?:{p})" for p in infos)) if infos else re.compile(r"(?!x)x")
    return Compiled(regexes, meta, info)
