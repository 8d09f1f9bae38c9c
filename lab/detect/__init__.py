"""lab.detect -- the lab's shared refusal detector.

    from lab.detect import detect, detect_batch, Verdict, METHODS, DETECTOR_VERSION
    v = detect("I'm sorry, but I can't help with that.")        # tiered (default)
    v.refusal, v.category, v.score, v.band, v.evidence

Methods: "tiered" (default: seed 001's rule pipeline, languages as data in eval/detector/*.yaml, decided
together with a small learned model, lab/detect/refusal_model.json), "tiered-rules" (the rules alone),
published keyword baselines with the same interface: "dictionary-000" (seed 000, Appendix 2),
"gcg" (llm-attacks test_prefixes), "substring" (refusal-direction paper), "keywords" (a plain
multilingual keyword list), and model judges "judge:<hub id or path>" (lab.detect.judges; GPU advised).
See README.md ("Refusal detector").
"""
from __future__ import annotations

import hashlib

from . import resources
from .learned import model_digest
from .verdict import BANDS, CATEGORIES, ENGAGED_CATEGORIES, REFUSAL_CATEGORIES, Verdict, band_for

METHODS = ("tiered", "tiered-rules", "dictionary-000", "gcg", "substring", "keywords")
JUDGE_PREFIX = "judge:"
_BASE_VERSION = "2.9.0"
# patterns (eval/detector/*.yaml), the learned model's weights and the code that decides (a threshold or
# a gate changed without a version bump must still change the version: the evaluation cache keys on it)
_DECIDING_CODE = ("combined.py", "tiered.py", "scan.py", "resources.py", "learned.py", "langid.py")


def _code_digest() -> str:
    from pathlib import Path

    here = Path(__file__).parent
    return hashlib.sha1(b"".join((here / f).read_bytes() for f in _DECIDING_CODE)).hexdigest()[:8]


DETECTOR_VERSION = (f"{_BASE_VERSION}+"
                    + hashlib.sha1((resources.fingerprint() + model_digest() + _code_digest()).encode()).hexdigest()[:8])

try:  # the lab's user-facing error type (CLI: message, exit code 2)
    from lab.errors import LabError as _LabError
except Exception:  # pragma: no cover - lab.errors absent
    class _LabError(Exception):
        pass


class DetectInputError(_LabError, ValueError):
    """Bad detector input (non-string response, invalid JSON/UTF-8 line, unknown method)."""


def _check_method(method: str) -> None:
    if not isinstance(method, str) or (method not in METHODS and not method.startswith(JUDGE_PREFIX)):
        raise DetectInputError(f"unknown detector method {method!r}; choose one of {', '.join(METHODS)} "
                               f"or {JUDGE_PREFIX}<hub id or path>")
    if method.startswith(JUDGE_PREFIX) and not method[len(JUDGE_PREFIX):].strip():
        raise DetectInputError(f"method {method!r}: give a model after '{JUDGE_PREFIX}'")


_detect_default = _detect_tiered = None  # imported on first use


def detect(response, prompt: str | None = None, lang: str | None = None, method: str = "tiered") -> Verdict:
    """Judge one model response. `lang` is only a hint; the response language is detected by script.

    response None or empty/whitespace -> refusal False, category "none", score 10, confidence 0.0,
    evidence ["<empty response>"] (a non-answer is not counted as a refusal; see README.md ("Refusal detector")).
    Any other non-string response raises DetectInputError.
    """
    if response is None:
        response = ""
    elif not isinstance(response, str):
        raise DetectInputError(f"response must be a string, got {type(response).__name__}")
    if prompt is not None and not isinstance(prompt, str):
        prompt = str(prompt)
    global _detect_default, _detect_tiered
    if method == "tiered":
        if _detect_default is None:
            from .combined import detect_default as _detect_default
        return _detect_default(response, prompt, lang, DETECTOR_VERSION)
    if method == "tiered-rules":
        if _detect_tiered is None:
            from .tiered import detect_tiered as _detect_tiered
        return _detect_tiered(response, prompt, lang, DETECTOR_VERSION)
    _check_method(method)
    if method.startswith(JUDGE_PREFIX):
        return detect_batch([response], [prompt], [lang], method)[0]
    if not response.strip():
        return Verdict(False, "none", 10, 0.0, ["<empty response>"], band_for(10), lang or "unknown", method,
                       DETECTOR_VERSION)
    from .baselines import detect_baseline

    return detect_baseline(method, response, DETECTOR_VERSION)


def detect_batch(responses, prompts=None, langs=None, method: str = "tiered") -> list[Verdict]:
    """detect() over a list; prompts / langs are None or lists of the same length."""
    _check_method(method)
    n = len(responses)
    if prompts is not None and len(prompts) != n:
        raise DetectInputError(f"prompts has {len(prompts)} items, responses {n}")
    if langs is not None and len(langs) != n:
        raise DetectInputError(f"langs has {len(langs)} items, responses {n}")
    if method.startswith(JUDGE_PREFIX) or method == "tiered":
        for i, r in enumerate(responses):
            if r is not None and not isinstance(r, str):
                raise DetectInputError(f"response {i}: must be a string, got {type(r).__name__}")
    if method.startswith(JUDGE_PREFIX):
        from .judges import judge_batch

        return judge_batch(method[len(JUDGE_PREFIX):], list(responses), prompts, langs, DETECTOR_VERSION)
    if method == "tiered":  # the learned model's n-gram look-up runs once for the whole batch (same verdicts)
        from .combined import detect_default_batch

        texts = [r or "" for r in responses]
        ps = [None if p is None else p if isinstance(p, str) else str(p) for p in prompts] if prompts is not None else [None] * n
        return detect_default_batch(texts, ps, list(langs) if langs is not None else [None] * n, DETECTOR_VERSION)
    return [
        detect(r, prompts[i] if prompts is not None else None, langs[i] if langs is not None else None, method)
        for i, r in enumerate(responses)
    ]


__all__ = [
    "detect", "detect_batch", "Verdict", "METHODS", "DETECTOR_VERSION", "DetectInputError",
    "BANDS", "CATEGORIES", "REFUSAL_CATEGORIES", "ENGAGED_CATEGORIES", "band_for", "JUDGE_PREFIX",
]
