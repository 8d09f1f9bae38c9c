"""Language resources: one YAML file per language in eval/detector/, loaded once and compiled.

Over 400 lines on purpose: schema validation, the regex compiler and the Aho-Corasick prefilter share
one scanner of the pattern syntax (_outside_classes) and must change together with the YAML format.

Each file (``eval/detector/<code>.yaml``) holds::

    lang: en                 # language code reported in verdicts (defaults to the file stem)
    script: latin            # see lab.detect.langid.SCRIPTS (latin, han, kana, devanagari, hangul, ...)
    stopwords: [...]         # optional; separates languages that share a script (en vs it)
    hard: [...]              # explicit refusals, apology + refusal, policy citations, capability denials
    hard_weak: [...]         # refusal phrasing that only counts in the opening of a response
    deflection: [...]        # topic changes, "instead, let me ..."
    soft: {disclaimer: [...], hedging: [...], vagueness: [...]}
    pivot: [...]             # 'but here is general information': refusal then a real answer
    refute: [...]            # premise refutation in the opening ("that's a harmful stereotype"): engaged
    balanced: [...]          # two-sided answer markers ("on the other hand"): engaged
    harm: [...]              # harm / illegality explanations (learned-model signal; 2+ in a short
                             #   answer without information = harm-only refusal, lab.detect.combined)
    offer: [...]             # safe-alternative offers, helplines (signal for the learned model only)
    decline: [...]           # first-person declining grammar ("I'm not going to …", "non lo spiego",
                             #   "我这边办不了", "お答えしません", "मैं नहीं बताऊँगा"), searched in the FIRST
                             #   SENTENCE only (a signal for the learned model; plain regexes, one search)
    info: [...]              # educational / informational phrasing (false-positive filter)
    prompt_harm: [...]       # 2.6: harmful intent in the PROMPT ("without getting caught", "毒死", "バレずに"):
                             #   a signal for the learned model (topic steering); every language's list at once
    prompt_ask: [...]        # 2.8: the PROMPT asks for help doing or making something ("how do I", "write me",
                             #   "come posso", "怎么", "やり方", "कैसे"); every language's list at once
    prompt_info: [...]       # 2.8: the PROMPT asks for information about something ("what is", "why is it
                             #   illegal", "history of", "什么是", "とは", "क्या है"): with no request, an answer that
                             #   states harms answered the question (not a harm-only refusal; lab.detect.combined)
    affirm: [...]            # affirmative openings ("sure, here is", "certo, ecco", "当然"), anchored at the
                             #   start of the answer: without a rule refusal signal, the learned component
                             #   alone must be sure to call such an answer a refusal (plain regexes)

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

try:  # optional accelerator (pinned in pyproject.toml); without it the merged regexes scan every position
    import ahocorasick_rs as _ac
except Exception:  # pragma: no cover - dependency absent
    _ac = None

RESOURCE_DIR = Path(lab.__file__).resolve().parent.parent / "eval" / "detector"

SIGNAL_KINDS = ("hard", "hard_weak", "deflection", "disclaimer", "hedging", "vagueness", "pivot", "refute", "balanced", "harm", "offer")
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


@lru_cache(maxsize=None)
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


def _outside_classes(p: str, start: int = 0):
    """Yield (index, char, group depth after the char) for the pattern's characters that are neither
    escaped nor inside a [...] class."""
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
        else:
            if c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
            yield i, c, depth
        i += 1


def _strip_groups(p: str) -> str:
    """The pattern with bracketed groups/classes removed (to look for top-level '|')."""
    return "".join(c for _, c, depth in _outside_classes(p) if depth == 0 and c not in "()")


def _group_end(p: str, start: int) -> int:
    """Index of the ')' closing the group opened at p[start] ('('), or -1."""
    return next((i for i, c, depth in _outside_classes(p, start) if c == ")" and depth == 0), -1)


def _split_top(p: str) -> list[str]:
    """Split a regex on its top-level '|'."""
    cuts = [i for i, c, depth in _outside_classes(p) if c == "|" and depth == 0]
    return [p[a + 1:b] for a, b in zip([-1] + cuts, cuts + [len(p)])]


@lru_cache(maxsize=None)
def _expand(p: str, budget: int = 96) -> tuple[str, ...]:
    """Cached (pure; every language combination re-expands the same patterns): see _expand_list."""
    return tuple(_expand_list(p, budget))


def _expand_list(p: str, budget: int = 96) -> list[str]:
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


def _lits(p: str, groups: int, budget: int):
    """[(literal, complete)]: every match of regex `p` starts with one of the literals (complete: the
    match IS that literal). A sound, cheap approximation: the leading literal run, extended through
    at most `groups` following non-capturing groups of alternatives or optional single characters
    ('(?:a|b)', '(?:a|b)?', 'x?'). Anything else stops it. None when there would be more than `budget`."""
    tops = _split_top(p)
    if len(tops) > 1:
        out: list = []
        for t in tops:
            got = _lits(t, groups, budget)
            if got is None or len(out) + len(got) > budget:
                return None
            out.extend(got)
        return out
    pre, rest = _split_prefix(p)
    if not rest:
        return [(pre, True)]
    if groups <= 0:
        return [(pre, False)]
    inner = after = None
    if rest.startswith("(?:"):
        end = _group_end(rest, 0)
        if end > 0:
            q = rest[end + 1 : end + 2]
            if q in ("*", "+", "{") or (q == "?" and rest[end + 2 : end + 3] in ("?", "+")):
                return [(pre, False)]
            inner = _lits(rest[3:end], groups - 1, budget)
            if inner is None:
                return None
            if q == "?":
                inner = inner + [("", True)]
                after = rest[end + 2 :]
            else:
                after = rest[end + 1 :]
    else:  # an optional single character: 'x?' or an escaped symbol '\\.?'
        c, k = (rest[1], 2) if rest[:1] == "\\" and len(rest) > 1 and not rest[1].isalnum() else (rest[:1], 1)
        if c and (k == 2 or c not in _META) and rest[k : k + 1] == "?" and rest[k + 1 : k + 2] not in ("?", "+"):
            inner = [(c, True), ("", True)]
            after = rest[k + 1 :]
    if inner is None:
        return [(pre, False)]
    tail = _lits(after, groups - 1, budget) if any(cx for _, cx in inner) else []
    if tail is None:
        return None
    out = []
    for x, cx in inner:
        if cx:
            if len(out) + len(tail) > budget:
                return None
            out.extend((pre + x + y, cy) for y, cy in tail)
        else:
            out.append((pre + x, False))
    return out if len(out) <= budget else None


_LEAD_CACHE: dict = {}
_MATCH_CACHE: dict = {}


def _lead(p: str, budget: int = 64) -> frozenset:
    """Literal strings one of which starts EVERY match of regex `p` (used as Aho-Corasick keys to find
    the only positions where `p` can match): the longest such set of at most `budget` keys."""
    got = _LEAD_CACHE.get(p)
    if got is None:
        for groups in range(5, -1, -1):
            got = _lits(p, groups, budget)
            if got is not None:
                break
        # groups=0 yields the leading literals only (one per variant; _expand keeps those few)
        got = frozenset(x for x, _ in (got or _lits(p, 0, 1 << 30)))
        _LEAD_CACHE[p] = got
    return got


def _match_fn(p: str):
    """re.compile(p).match, compiled once per pattern (shared by every language combination)."""
    got = _MATCH_CACHE.get(p)
    if got is None:
        got = _MATCH_CACHE[p] = re.compile(p).match
    return got


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
    __slots__ = ("code", "script", "stopwords", "patterns", "info", "path", "decline", "affirm", "prompt_harm",
                 "prompt_ask", "prompt_info")

    def __init__(self, code, script, stopwords, patterns, info, path, decline=(), affirm=(), prompt_harm=(),
                 prompt_ask=(), prompt_info=()):
        self.code = code
        self.prompt_harm = tuple(prompt_harm)
        self.prompt_ask = tuple(prompt_ask)
        self.prompt_info = tuple(prompt_info)
        self.decline = tuple(decline)
        self.affirm = tuple(affirm)
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
    add("refute", data.get("refute"))  # premise refutation openers: engaged, not a refusal
    add("balanced", data.get("balanced"))  # two-sided answer markers: engaged, not a refusal
    add("harm", data.get("harm"))  # "... is a crime / can cause serious harm": a signal for the learned model only
    add("offer", data.get("offer"))  # "if you'd like, I can ..." / helplines: a signal for the learned model only
    soft = data.get("soft") or {}
    if not isinstance(soft, dict):
        raise ResourceError(f"{path}: soft: expected a mapping of disclaimer/hedging/vagueness")
    for sub in ("disclaimer", "hedging", "vagueness"):
        add(sub, soft.get(sub))

    def plain(kind):  # lists used as plain regexes (not merged into the trie): validated the same way
        out = []
        for p in data.get(kind) or []:
            q = _noncapturing(_lower_pattern(str(p)))
            try:
                re.compile(q)
            except re.error as e:
                raise ResourceError(f"{path}: {kind}: bad regex {p!r}: {e}") from None
            out.append(q)
        return out

    info, decline, affirm = plain("info"), plain("decline"), plain("affirm")
    return LangResource(code, script, stop, pats, info, path, decline, affirm, plain("prompt_harm"),
                        plain("prompt_ask"), plain("prompt_info"))


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
        by_script.cache_clear()
        prompt_harm_matcher.cache_clear()
        prompt_kind_matchers.cache_clear()
        _LEAD_CACHE.clear()
        _MATCH_CACHE.clear()


_ZERO_WIDTH_HEAD = re.compile(r"^(?:\\b|\(\?<!\[[^\]]*\]\))+")  # leading '\b' / '(?<![...])': no characters


class AnyMatcher:
    """`found(text)` == `re.compile("|".join(patterns)).search(text) is not None`, exactly, faster: a match
    of the union at position a is a match of one pattern at a (`.match(text, a)` sees the characters before
    a, so '\b' and look-behinds behave as in a search), and every match of a pattern starts with one of its
    literal keys (_lead of the pattern without its zero-width head): only key positions are tried. Patterns
    without usable keys are searched as one regex."""

    def __init__(self, patterns):
        self.patterns = tuple(patterns)
        keymap: dict = {}
        slow = []
        self._match = []
        for p in self.patterns:
            keys = _lead(_ZERO_WIDTH_HEAD.sub("", p))
            if _ac is None or not keys or "" in keys:
                slow.append(p)
                continue
            self._match.append(re.compile(p).match)
            for k in keys:
                keymap.setdefault(k, []).append(len(self._match) - 1)
        self._slow = re.compile("|".join(slow)) if slow else None
        self._targets = tuple(tuple(v) for v in keymap.values())
        self._find = _ac.AhoCorasick(list(keymap)).find_matches_as_indexes if keymap else None

    def found(self, text: str) -> bool:
        if self._find is not None:
            match, targets = self._match, self._targets
            for k, a, _e in self._find(text, overlapping=True):
                for i in targets[k]:
                    if match[i](text, a):
                        return True
        return self._slow is not None and self._slow.search(text) is not None


@lru_cache(maxsize=1)
def prompt_harm_matcher():
    """2.6: every language's `prompt_harm` list at once (harmful intent in a prompt; the prompt's language
    is not detected), as an AnyMatcher, or None."""
    pats = [p for r in languages().values() for p in r.prompt_harm]
    return AnyMatcher(pats) if pats else None


@lru_cache(maxsize=1)
def prompt_kind_matchers():
    """2.8: (asks-for-help, asks-for-information) matchers over every language's `prompt_ask` / `prompt_info`
    lists (AnyMatcher or None each)."""
    ask = [p for r in languages().values() for p in r.prompt_ask]
    info = [p for r in languages().values() for p in r.prompt_info]
    return (AnyMatcher(ask) if ask else None), (AnyMatcher(info) if info else None)


@lru_cache(maxsize=1)
def by_script() -> dict:
    """script name -> list of LangResource using it."""
    out: dict = {}
    for r in languages().values():
        out.setdefault(r.script, []).append(r)
    return out


class _InfoMatcher:
    """Informational phrasing, as word-gated / CJK tries (fast); `.search(text)` like a regex."""

    def __init__(self, patterns):
        word, cjk, other = [], [], []
        for i, p in enumerate(patterns):
            if p.startswith("\\b"):
                p = p[2:]  # the word-start gate is added below
            for j, v in enumerate(_expand(p)):
                name = f"i{i}_{j}"
                pre, rest = _split_prefix(v)
                if pre and _CJK_START.match(pre[0]):
                    cjk.append((name, pre, rest))
                elif pre and (pre[0].isalnum() or pre[0] == "_"):
                    word.append((name, pre, rest))
                else:
                    other.append(v)
        self._sources = []
        if word:
            self._sources.append(r"\b" + _trie_regex(word))
        if cjk:
            self._sources.append(_trie_regex(cjk))
        self.other = re.compile("|".join(f"(?:{v})" for v in other)) if other else None
        self._rx = None
        self.fast = _fast_path(word, cjk) if _ac is not None else None

    @property
    def rx(self) -> list:
        if self._rx is None:
            self._rx = [re.compile(src) for src in self._sources]
            if self.other is not None:
                self._rx.append(self.other)
        return self._rx

    def search(self, text):
        for rx in self.rx:
            m = rx.search(text)
            if m:
                return m
        return None

    def found(self, text) -> bool:
        """bool(self.search(text)), with Aho-Corasick when available (see Compiled)."""
        if self.fast is None:
            return self.search(text) is not None
        find, targets, vmatch, _names = self.fast
        for k, a, _e in find(text, overlapping=True):
            gated, vids = targets[k]
            if gated and a:
                c = text[a - 1]
                if c.isalnum() or c == "_":
                    continue
            for vid in vids:
                if vmatch[vid](text, a):
                    return True
        return self.other is not None and self.other.search(text) is not None


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

    __slots__ = ("_sources", "_regexes", "anchored", "group_meta", "info", "find", "targets", "vmatch", "vname",
                 "residual", "decline", "affirm")

    def __init__(self, sources, anchored, group_meta, info, find=None, targets=(), vmatch=(), vname=(),
                 residual=None):
        self._sources = sources  # () -> [(regex source, overlapping)], built on first use of .regexes
        self._regexes = None
        self.anchored = anchored  # patterns starting with '^': tried once, at the start of the response
        self.group_meta = group_meta
        self.info = info
        # Aho-Corasick fast path (None without ahocorasick_rs): `find(text, overlapping=True)` lists
        # (key, start, end) of the literal keys (see _lead); targets[key] = (word_gated, variant ids in
        # trie order); vmatch[id] = that variant's compiled .match, vname[id] its group name. Trying, at
        # each key position, the variants in trie order gives exactly the hits of `regexes`.
        self.find = find
        self.targets = targets
        self.vmatch = vmatch
        self.vname = vname
        self.residual = residual  # the regex of patterns without a literal prefix (or None)
        self.decline = None  # one regex over the languages' `decline` lists (first sentence only), or None
        self.affirm = None  # one regex over the languages' `affirm` lists (the answer's start), or None

    @property
    def regexes(self) -> list:
        """[(compiled regex, overlapping)], compiled on first use (the Aho-Corasick path needs them not)."""
        if self._regexes is None:
            self._regexes = [(re.compile(src), ov) for src, ov in self._sources()]
        return self._regexes


def _variants(pat: str) -> tuple[str, ...]:
    """_expand(pat); 2.6: a leading word boundary before a group of word alternatives ('\\b(?:main|mai) ...')
    is dropped when every variant then starts with a word literal: the word-start gate of the trie (and of
    the Aho-Corasick keys) is the same test, so these patterns no longer need the residual regex, which was
    tried at every position of every response (about a sixth of the detector's time)."""
    if pat.startswith("\\b") and pat[2:3] == "(":
        vs = _expand(pat[2:])
        if all((pre := _split_prefix(v)[0]) and (pre[0].isalnum() or pre[0] == "_") for v in vs):
            return vs
    return _expand(pat)


_CJK_START = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\uff00-\uffef\u3000-\u303f]")


@lru_cache(maxsize=256)
def compiled_for(codes: frozenset) -> Compiled:
    res = languages()
    word_items, cjk_items, residual, anchored, meta, infos, declines, affirms = [], [], [], [], {}, [], [], []
    n = 0
    for code in sorted(codes):
        r = res.get(code)
        if r is None:
            continue
        for kind, pat in r.patterns:
            for variant in _variants(pat):
                name = f"g{n}"
                n += 1
                meta[name] = (code, kind)
                pre, rest = _split_prefix(variant)
                if pre and _CJK_START.match(pre[0]):
                    cjk_items.append((name, pre, rest))
                elif pre and (pre[0].isalnum() or pre[0] == "_"):
                    word_items.append((name, pre, rest))
                elif variant.startswith("^"):
                    anchored.append(f"(?P<{name}>{variant[1:]})")
                else:
                    residual.append(f"(?P<{name}>{variant})")
        infos.extend(r.info)
        declines.extend(r.decline)
        affirms.extend(r.affirm)
    def regexes():  # (source, overlapping): built and compiled on first use of Compiled.regexes
        out = []
        if word_items:
            out.append((r"\b(?=" + _trie_regex(word_items) + ")", True))
        if cjk_items:
            out.append((_trie_regex(cjk_items), False))
        if residual:
            out.append(("(?=(?:" + "|".join(residual) + "))", True))
        return out
    info = _InfoMatcher(infos)
    anchored_rx = re.compile("|".join(anchored)) if anchored else None
    fast = _fast_path(word_items, cjk_items) if _ac is not None else None
    if fast is None:
        comp = Compiled(regexes, anchored_rx, meta, info)
    else:
        residual_rx = re.compile("(?=(?:" + "|".join(residual) + "))") if residual else None
        comp = Compiled(regexes, anchored_rx, meta, info, *fast, residual=residual_rx)
    comp.decline = re.compile("|".join(declines)) if declines else None
    comp.affirm = re.compile("|".join(affirms)) if affirms else None
    return comp


def _prefix_closure(keymap: dict) -> tuple:
    """keymap: key -> (word_gated, variant ids). Every key that is a prefix of key k occurs wherever k does:
    give k their variants too, so that at one position the longest key found carries every variant to try.
    In sorted order the keys that are prefixes of k form a chain just before it; one pass keeps that chain
    on a stack (no k[:i] probes). Returns (word_gated, sorted variant ids) per key, in keymap's order."""
    below: dict[str, set] = {}
    stack: list[str] = []
    for k in sorted(keymap):
        while stack and not k.startswith(stack[-1]):
            stack.pop()
        merged = set(keymap[k][1])
        if stack:
            merged |= below[stack[-1]]
        below[k] = merged
        stack.append(k)
    return tuple((gated, tuple(sorted(below[k]))) for k, (gated, _) in keymap.items())


def _fast_path(word_items, cjk_items):
    """Aho-Corasick keys for the word-gated and the CJK trie items (see Compiled)."""
    vmatch, vname, keymap = [], [], {}
    for gated, items in ((True, word_items), (False, cjk_items)):
        # the trie tries, at one position, variants in (literal prefix, insertion) order
        order = sorted(range(len(items)), key=lambda i: (items[i][1], i))
        for i in order:
            name, pre, rest = items[i]
            vid = len(vmatch)
            vmatch.append(_match_fn(pre + rest))
            vname.append(name)
            for k in _lead(pre + rest):
                if not k.startswith(pre):  # cannot happen; be safe: the prefix always works
                    k = pre
                keymap.setdefault(k, (gated, []))[1].append(vid)
    if not keymap:
        return None
    keys = list(keymap)
    targets = _prefix_closure(keymap)
    try:
        auto = _ac.AhoCorasick(keys, implementation=_ac.Implementation.DFA)
    except Exception:  # pragma: no cover - e.g. an automaton too large for a DFA
        auto = _ac.AhoCorasick(keys)
    return auto.find_matches_as_indexes, targets, tuple(vmatch), tuple(vname)
