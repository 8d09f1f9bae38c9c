"""lab.stats: intervals and kappa from scipy / statsmodels, checked against values computed by hand."""
from __future__ import annotations

import math

import pytest

from lab import metrics
from lab.stats import mean_ci, t_critical, t_interval, wilson_interval


def test_wilson_matches_hand_computed_values():
    # 0/10: upper = (z^2/2n + z*sqrt(z^2/4n^2)) / (1 + z^2/n) with z = 1.959964 -> 0.27753
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.277533, abs=1e-6)
    # 5/10: 0.5 -+ z*sqrt(0.025 + z^2/400) / (1 + z^2/10) -> (0.236593, 0.763407)
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.236593, abs=1e-6), pytest.approx(0.763407, abs=1e-6))
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(1 - 0.277533, abs=1e-6)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_t_interval_beyond_ten_seeds_uses_the_t_quantile():
    # 11 seeds 0.0, 0.1, ..., 1.0: mean 0.5, sd/sqrt(n) = sqrt(0.11)/sqrt(11) = 0.1, t(0.975, 10) = 2.228139
    values = [i / 10 for i in range(11)]
    m, lo, hi = t_interval(values)
    assert m == pytest.approx(0.5)
    assert hi - m == pytest.approx(0.2228139, abs=1e-6)  # z = 1.96 would give 0.196 (12 % too narrow)
    assert m - lo == pytest.approx(hi - m)
    assert t_critical(2) == pytest.approx(4.302653, abs=1e-6)
    assert t_critical(120) == pytest.approx(1.979930, abs=1e-6)
    assert t_interval([0.3]) == (0.3, 0.3, 0.3)


def test_mean_ci():
    s = mean_ci([0.1, 0.2, 0.3])
    assert s["mean"] == pytest.approx(0.2) and s["sd"] == pytest.approx(0.1)
    assert s["half_width"] == pytest.approx(4.302653 * 0.1 / math.sqrt(3), abs=1e-6)
    assert s["ci95"] == [pytest.approx(0.2 - s["half_width"]), pytest.approx(0.2 + s["half_width"])]
    one = mean_ci([0.5])
    assert one["ci95"] is None and one["half_width"] is None and one["n"] == 1


def test_metrics_uses_the_library_intervals():
    assert metrics.wilson_interval is wilson_interval and metrics.t_interval is t_interval
    rows = [{"lang": "en", "kind": "harmful", "refusal": i < 5, "pid": i} for i in range(10)]
    m = metrics.refusal_metrics(rows)["en"]
    assert m["harmful_refusal"] == 0.5 and m["k_harmful"] == 5
    assert m["harmful_refusal_ci"] == [pytest.approx(0.236593, abs=1e-6), pytest.approx(0.763407, abs=1e-6)]
