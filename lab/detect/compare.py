"""Agreement between judges: Cohen's kappa on binary refusal decisions."""
from __future__ import annotations


def cohen_kappa(a, b) -> float | None:
    """Cohen's kappa of two equally long sequences of booleans.

    Returns 1.0 when both judges agree everywhere (including the degenerate case where both always
    give the same single answer), None for empty input.
    """
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"sequences differ in length: {len(a)} vs {len(b)}")
    n = len(a)
    if n == 0:
        return None
    po = sum(1 for x, y in zip(a, b) if bool(x) == bool(y)) / n
    pa, pb = sum(map(bool, a)) / n, sum(map(bool, b)) / n
    pe = pa * pb + (1 - pa) * (1 - pb)
    if pe >= 1.0:
        return 1.0 if po == 1.0 else 0.0
    return round((po - pe) / (1 - pe), 4)
