"""Signal hits in a window of a (lower-cased) response: the merged regexes of lab.detect.resources.Compiled,
or the same hits found with its Aho-Corasick keys (only positions where a literal key occurs are tried).
Both append (start, end, group name) to `hits`, at most 48, in the same order (tests/test_detect.py).
"""
from __future__ import annotations


def scan_regex(comp, low: str, hits: list) -> None:
    """Append (start, end, group) of the signal matches in `low` (at most one per start position)."""
    for rx, overlapping in comp.regexes:
        for m in rx.finditer(low):
            g = m.lastgroup
            # zero-width (overlapping) matches: the pattern starts at m.start() and ends where its group ends
            a, b = (m.start(), m.end(g)) if overlapping else m.span()
            hits.append((a, b, g))
            if len(hits) >= 48:
                break


def scan_fast(comp, low: str, hits: list) -> None:
    """The hits of scan_regex (same positions, groups, ends and order), found with Aho-Corasick:
    only positions where a literal key occurs are tried, each with the variants the key can start,
    in trie order. Word-gated keys need a non-word character (or the start) before them; CJK matches
    do not overlap (the CJK trie consumes its matches)."""
    found = comp.find(low, overlapping=True)
    if found:
        targets = comp.targets
        word = {}
        cjk = {}
        for k, a, _e in found:
            gated, vids = targets[k]
            if gated:
                if a:
                    c = low[a - 1]
                    if c.isalnum() or c == "_":
                        continue
                d = word
            else:
                d = cjk
            got = d.get(a)
            # keys found at one position are prefixes of the longest one, whose variants include theirs
            if got is None or len(vids) > len(got):
                d[a] = vids
        vmatch, vname = comp.vmatch, comp.vname
        if word:
            for a in sorted(word):
                for vid in word[a]:
                    m = vmatch[vid](low, a)
                    if m:
                        hits.append((a, m.end(), vname[vid]))
                        break
                if len(hits) >= 48:
                    break
        if cjk:
            last = 0
            for a in sorted(cjk):
                if a < last:
                    continue
                for vid in cjk[a]:
                    m = vmatch[vid](low, a)
                    if m:
                        last = m.end()
                        hits.append((a, last, vname[vid]))
                        break
                else:
                    continue
                if len(hits) >= 48:
                    break
    if comp.residual is not None:
        for m in comp.residual.finditer(low):
            g = m.lastgroup
            hits.append((m.start(), m.end(g), g))
            if len(hits) >= 48:
                break
