"""The learned half of the default detector: logistic regression over character n-grams of the answer's
opening and closing plus the rule pipeline's signals (lab.detect.tiered.FEATURES).

The model is a small JSON file shipped in the package (``refusal_model.json``): the kept n-grams with
their weights, the weights of the rule signals, the bias and the training record. It is trained by
``python -m lab.detect.train`` (scikit-learn, deterministic) on the own tuning split
(eval/detector/labelled/tune.jsonl), the own cases and the development data; the untuned split is never
used. Inference is plain Python + one Aho-Corasick pass (ahocorasick-rs), or a loop over the n-grams
when that package is absent (same result).

Window: the lower-cased response with typographic apostrophes and markdown bold normalised; its first
HEAD characters and last TAIL characters (fewer for CJK-like scripts). Features are the presence of each
kept n-gram in the window (binary), so a long answer costs the same as a short one.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import threading
from operator import mul
from pathlib import Path

try:
    import ahocorasick_rs as _ac
except Exception:  # pragma: no cover - optional accelerator
    _ac = None

MODEL_PATH = Path(__file__).resolve().parent / "refusal_model.json"
HEAD, TAIL = 300, 150
HEAD_DENSE, TAIL_DENSE = 120, 50
NGRAM_SIZES = (2, 3, 4, 5)
_APOS = ("\u2019", "\u2018", "\u02bc", "\uff07")
_lock = threading.Lock()
_MODELS: dict = {}


def window(text: str, dense: bool) -> str:
    """The part of a (stripped) response the n-grams are taken from (see module doc)."""
    head, tail = (HEAD_DENSE, TAIL_DENSE) if dense else (HEAD, TAIL)
    s = text if len(text) <= head + tail else text[:head] + "\n" + text[-tail:]
    s = s.lower()
    for q in _APOS:
        if q in s:
            s = s.replace(q, "'")
    if "**" in s:
        s = s.replace("**", "")
    return "\x02" + s + "\x03"  # start / end markers: n-grams can see "the answer begins with ..."


def ngrams(w: str):
    """Every n-gram of the window (NGRAM_SIZES), with repeats (training counts document frequency)."""
    for n in NGRAM_SIZES:
        for i in range(len(w) - n + 1):
            yield w[i : i + n]


SCALE = 100000  # weights are stored with 5 decimals: as integers they sum exactly, in any order (2.6)


class Model:
    __slots__ = ("grams", "gw", "gwi", "fw", "bias", "features", "record", "digest", "_find", "_index", "_tables")

    def __init__(self, data: dict, digest: str):
        from .tiered import FEATURES

        self.grams = list(data["ngrams"])
        self.gw = [float(x) for x in data["ngram_weights"]]
        self.features = tuple(data["features"])
        if self.features != FEATURES:
            raise ValueError(f"{MODEL_PATH}: trained on features {self.features}, code has {FEATURES}")
        self.fw = [float(x) for x in data["feature_weights"]]
        self.bias = float(data["bias"])
        self.record = data.get("record", {})
        self.digest = digest
        if len(self.gw) != len(self.grams) or len(self.fw) != len(self.features):
            raise ValueError(f"{MODEL_PATH}: weight counts do not match")
        self.gwi = [int(round(w * SCALE)) for w in self.gw]
        if any(abs(i / SCALE - w) > 1e-9 for i, w in zip(self.gwi, self.gw)):
            raise ValueError(f"{MODEL_PATH}: n-gram weights must have at most 5 decimals")
        self._tables = None
        self._index = {g: i for i, g in enumerate(self.grams)}
        self._find = None
        if _ac is not None and self.grams:
            try:
                auto = _ac.AhoCorasick(self.grams, matchkind=_ac.MatchKind.Standard,
                                       implementation=_ac.Implementation.DFA)
            except Exception:  # pragma: no cover - automaton too large for a DFA
                auto = _ac.AhoCorasick(self.grams, matchkind=_ac.MatchKind.Standard)
            self._find = auto.find_matches_as_indexes

    def gram_ids(self, w: str) -> set:
        if self._find is not None:
            return {m[0] for m in self._find(w, overlapping=True)}
        idx = self._index
        return {idx[g] for g in ngrams(w) if g in idx}

    def logit(self, w: str, feats) -> tuple[float, set]:
        ids = self.gram_ids(w)
        return self.logit_of(sum(map(self.gwi.__getitem__, ids)), feats), ids

    def logit_of(self, gram_sum: int, feats) -> float:
        """The logit from the exact integer sum of the present n-grams' weights (see gram_sums)."""
        return self.bias + gram_sum / SCALE + sum(map(mul, self.fw, feats))

    def gram_sums(self, windows: list) -> list:
        """[sum of the integer weights of the n-grams present in each window]: gram_ids + sum for a whole
        batch at once, with numpy. Every 2-gram of every window is looked up in a dense table; an n-gram
        (n > 2) only where its (n-1)-prefix begins a kept n-gram (a collision-free hash table per length);
        presence is deduplicated in a (windows x n-grams) matrix. The sums are of integers below 2**53,
        so float64 arithmetic is exact: equal to the one-window path in every case."""
        import numpy as np

        if not windows:
            return []
        t = self._tables if self._tables is not None else self._build_tables()
        if t is False:  # alphabet too large for exact int64 keys: the one-window path
            return [sum(map(self.gwi.__getitem__, self.gram_ids(w))) for w in windows]
        lut, base, id2, ext2, longer, gwf = t
        text = "\x00".join(windows) + "\x00" * 5  # '\x00' is in no n-gram (checked): none spans two windows
        cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        codes = lut[np.minimum(cp, len(lut) - 1)]
        lens = np.fromiter(map(len, windows), dtype=np.int64, count=len(windows)) + 1
        doc = np.repeat(np.arange(len(windows)), lens)
        present = np.zeros((len(windows), len(self.grams)), dtype=bool)
        k = codes[:-1] * base + codes[1:]  # every 2-gram
        g = id2[k]
        hit = np.flatnonzero(g >= 0)
        present[doc[hit], g[hit]] = True
        pos = np.flatnonzero(ext2[k])  # positions whose first 2 characters begin a longer n-gram
        k = k[pos]
        for n, (mult, shift, tkey, tid, text_) in enumerate(longer, 3):  # extend, look up, keep the extensible
            if not len(pos):
                break
            k = k * base + codes[pos + (n - 1)]
            slot = ((k.astype(np.uint64) * mult) >> shift).astype(np.intp)
            found = tkey[slot] == k
            g = np.where(found, tid[slot], -1)
            hit = np.flatnonzero(g >= 0)
            present[doc[pos[hit]], g[hit]] = True
            keep = np.flatnonzero(found & text_[slot])
            pos, k = pos[keep], k[keep]
        return (present.astype(np.float64) @ gwf).astype(np.int64).tolist()

    def _build_tables(self):
        """The look-up tables of gram_sums: keys in base (alphabet + 1), characters outside the n-grams'
        alphabet coded 0 (no n-gram key contains a 0 digit); a dense table of the 2-grams, a dense mask of
        the 2-character prefixes of the longer n-grams, and per longer length n a collision-free hash table
        of the n-grams and of the n-prefixes of longer ones. False where that does not fit."""
        import numpy as np

        alphabet = sorted(set("".join(self.grams)))
        base = len(alphabet) + 1
        longest = max(map(len, self.grams), default=0)
        if (not self.grams or "\x00" in alphabet or base ** max(longest, 2) >= 2 ** 62 or base > 4096
                or min(map(len, self.grams)) < 2):
            self._tables = False
            return False
        lut = np.zeros(ord(alphabet[-1]) + 2, dtype=np.int64)  # the last entry (0) catches every larger code
        code = {c: i + 1 for i, c in enumerate(alphabet)}
        lut[[ord(c) for c in alphabet]] = np.arange(1, base)

        def key(g):
            k = 0
            for c in g:
                k = k * base + code[c]
            return k

        id2 = np.full(base * base, -1, dtype=np.int64)
        two = [i for i, g in enumerate(self.grams) if len(g) == 2]
        id2[[key(self.grams[i]) for i in two]] = two
        ext2 = np.zeros(base * base, dtype=bool)
        ext2[[key(g[:2]) for g in self.grams if len(g) > 2]] = True
        longer = []
        rng = random.Random(0)
        for n in range(3, longest + 1):
            # one table per length: the n-grams (their id) and the n-prefixes of longer ones (extensible)
            entries: dict = {}
            for i, g in enumerate(self.grams):
                if len(g) == n:
                    entries.setdefault(key(g), [-1, False])[0] = i
                elif len(g) > n:
                    entries.setdefault(key(g[:n]), [-1, False])[1] = True
            keys = list(entries)
            bits = max(4, (len(keys) ** 2).bit_length())  # ~n**2 slots: a random multiplier is collision-free
            for _try in range(200):                         # with probability ~0.6 (multiplicative hashing)
                mult = rng.getrandbits(64) | 1
                slots = [((k * mult) & 0xFFFFFFFFFFFFFFFF) >> (64 - bits) for k in keys]
                if len(set(slots)) == len(keys):
                    break
            else:
                bits = 0
            if not 4 <= bits <= 22:  # too many n-grams for this table: the one-window path
                self._tables = False
                return False
            tkey = np.full(1 << bits, -1, dtype=np.int64)
            tid = np.full(1 << bits, -1, dtype=np.int64)
            text_ = np.zeros(1 << bits, dtype=bool)
            tkey[slots] = keys
            tid[slots] = [entries[k][0] for k in keys]
            text_[slots] = [entries[k][1] for k in keys]
            longer.append((np.uint64(mult), np.uint64(64 - bits), tkey, tid, text_))
        self._tables = (lut, base, id2, ext2, longer, np.array(self.gwi, dtype=np.float64))
        return self._tables

    def top_grams(self, ids, sign: int, k: int = 3) -> list:
        """The k n-grams pushing hardest towards refusal (sign +1) or away from it (-1)."""
        picked = sorted((i for i in ids if self.gw[i] * sign > 0), key=lambda i: -abs(self.gw[i]))[:k]
        return [self.grams[i].strip("\x02\x03") for i in picked]


def model_digest(path: Path = MODEL_PATH) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()[:8] if path.is_file() else "none"


def load(path: Path = MODEL_PATH):
    """The model at `path` (default: the shipped one), loaded once; None when the file is absent."""
    key = str(path)
    if key not in _MODELS:
        with _lock:
            if not Path(path).is_file():
                _MODELS[key] = None
            else:
                raw = Path(path).read_bytes()
                try:
                    data = json.loads(raw.decode("utf-8"))
                except ValueError as e:
                    raise ValueError(f"{path}: not a valid model file: {e}") from None
                _MODELS[key] = Model(data, hashlib.sha1(raw).hexdigest()[:8])
    return _MODELS[key]


def reset() -> None:
    _MODELS.clear()


def sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)
