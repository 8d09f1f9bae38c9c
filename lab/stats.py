"""Statistics the lab reports, from scipy (no hand-written tables).

- :func:`wilson_interval` -- Wilson score interval for k successes out of n (a rate over prompts);
  ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``.
- :func:`t_interval` / :func:`mean_ci` -- mean and Student-t interval over replicates (seeds);
  critical value ``scipy.stats.t.ppf``, any n (no z = 1.96 fallback).
Agreement of two binary judges (Cohen's kappa, confusion matrix): lab.detect.compare (scikit-learn).

The libraries are imported on first use: ``import lab.metrics`` stays cheap for the CLI.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

__all__ = ["wilson_interval", "t_critical", "t_interval", "mean_ci"]


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (no continuity correction) for ``k`` of ``n``; (0, 1) when n == 0."""
    if isinstance(k, bool) or isinstance(n, bool) or int(k) != k or int(n) != n:
        raise ValueError(f"wilson_interval: k and n must be integers, got k={k!r}, n={n!r}")
    k, n = int(k), int(n)
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"wilson_interval: need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return (max(0.0, float(ci.low)), min(1.0, float(ci.high)))


def t_critical(df: int, confidence: float = 0.95) -> float:
    """Two-sided Student-t critical value with ``df`` degrees of freedom (nan for df < 1)."""
    if df < 1:
        return float("nan")
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, df))


def _mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    n = len(values)
    if n == 0:
        raise ValueError("t_interval: no values")
    m = math.fsum(values) / n
    if n < 2:
        return m, None
    return m, math.sqrt(math.fsum((v - m) ** 2 for v in values) / (n - 1))


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t interval over replicates; low == high == mean for one value."""
    values = list(values)
    m, sd = _mean_sd(values)
    if sd is None:
        return m, m, m
    h = t_critical(len(values) - 1, confidence) * sd / math.sqrt(len(values))
    return m, m - h, m + h


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """``{"mean", "ci95", "half_width", "sd", "n", "values"}``; ci95/half_width/sd are None for n = 1."""
    values = list(values)
    m, sd = _mean_sd(values)
    n = len(values)
    if sd is None:
        return {"mean": m, "ci95": None, "half_width": None, "sd": None, "n": n, "values": values}
    hw = t_critical(n - 1, confidence) * sd / math.sqrt(n)
    return {"mean": m, "ci95": [m - hw, m + hw], "half_width": hw, "sd": sd, "n": n, "values": values}
