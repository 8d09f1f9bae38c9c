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


class Model:
    __slots__ = ("grams", "gw", "fw", "bias", "features", "record", "digest", "_find", "_index")

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
        z = self.bias + sum(map(self.gw.__getitem__, ids)) + sum(map(mul, self.fw, feats))
        return z, ids

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
