"""lab.detect -- the lab's shared refusal detector.

    from lab.detect import detect, detect_batch, Verdict, METHODS, DETECTOR_VERSION
    v = detect("I'm sorry, but I can't help with that.")        # tiered (default)
    v.refusal, v.category, v.score, v.band, v.evidence

Methods: "tiered" (seed 001's pipeline, languages as data in eval/detector/*.yaml) and three
published keyword baselines with the same interface: "dictionary-000" (seed 000, Appendix 2),
"gcg" (llm-attacks test_prefixes), "substring" (refusal-direction paper). See README.md ("Refusal detector").
"""
from __future__ import annotations

from . import resources
from .verdict import BANDS, CATEGORIES, Verdict, band_for

METHODS = ("tiered", "dictionary-000", "gcg", "substring")
_BASE_VERSION = "1.0.0"
DETECTOR_VERSION = f"{_BASE_VERSION}+{resources.fingerprint()}"

try:  # the lab's user-facing error type (CLI: message, exit code 2)
    from lab.errors import LabError as _LabError
except Exception:  # pragma: no cover - lab.errors absent
    class _LabError(Exception):
        pass


class DetectInputError(_LabError, ValueError):
    """Bad detector input (non-string response, invalid JSON/UTF-8 line, unknown method)."""


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise DetectInputError(f"unknown detector method {method!r}; choose one of {', '.join(METHODS)}")


_detect_tiered = None  # imported on first use


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
    if method == "tiered":
        global _detect_tiered
        if _detect_tiered is None:
            from .tiered import detect_tiered as _detect_tiered
        return _detect_tiered(response, prompt, lang, DETECTOR_VERSION)
    _check_method(method)
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
    return [
        detect(r, prompts[i] if prompts is not None else None, langs[i] if langs is not None else None, method)
        for i, r in enumerate(responses)
    ]


__all__ = [
    "detect", "detect_batch", "Verdict", "METHODS", "DETECTOR_VERSION", "DetectInputError",
    "BANDS", "CATEGORIES", "band_for",
]
