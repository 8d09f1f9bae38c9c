"""Agreement between judges on the binary refusal decision: Cohen's kappa and the confusion matrix
from scikit-learn (sklearn.metrics.cohen_kappa_score / confusion_matrix), disagreements by index.

    from lab.detect.compare import agreement, agreement_report, compare_methods
    agreement([True, False, ...], [True, True, ...])
    # {'n', 'kappa', 'agreement', 'confusion': {'labels': [False, True], 'matrix': [[a0b0, a0b1], [a1b0, a1b1]]},
    #  'rate_a', 'rate_b', 'disagree': [indices]}
"""
from __future__ import annotations

from itertools import combinations


def cohen_kappa(a, b) -> float | None:
    """Cohen's kappa of two equally long sequences of booleans (sklearn.metrics.cohen_kappa_score).

    Returns None for empty input. When kappa is undefined (both judges give one and the same single
    answer throughout: expected agreement 1) it is 1.0 if they agree everywhere, else 0.0.
    """
    a, b = [bool(x) for x in a], [bool(x) for x in b]
    if len(a) != len(b):
        raise ValueError(f"sequences differ in length: {len(a)} vs {len(b)}")
    if not a:
        return None
    if len(set(a)) == 1 and len(set(b)) == 1:
        return 1.0 if a[0] == b[0] else 0.0
    from sklearn.metrics import cohen_kappa_score

    return round(float(cohen_kappa_score(a, b, labels=[False, True])), 4)


def confusion(a, b) -> list[list[int]]:
    """2x2 counts, rows = a (False, True), columns = b (False, True) (sklearn.metrics.confusion_matrix)."""
    from sklearn.metrics import confusion_matrix

    a, b = [bool(x) for x in a], [bool(x) for x in b]
    if not a:
        return [[0, 0], [0, 0]]
    return confusion_matrix(a, b, labels=[False, True]).tolist()


def agreement(a, b) -> dict:
    a, b = [bool(x) for x in a], [bool(x) for x in b]
    n = len(a)
    k = cohen_kappa(a, b)
    return {"n": n, "kappa": k, "agreement": round(sum(x == y for x, y in zip(a, b)) / n, 4) if n else None,
            "confusion": {"labels": [False, True], "rows": "first", "matrix": confusion(a, b)},
            "rate_a": round(sum(a) / n, 4) if n else None, "rate_b": round(sum(b) / n, 4) if n else None,
            "disagree": [i for i, (x, y) in enumerate(zip(a, b)) if x != y]}


def agreement_report(decisions: dict) -> dict:
    """decisions: method -> list of refusal booleans (same length). Pairwise agreement for every pair."""
    names = list(decisions)
    lens = {len(v) for v in decisions.values()}
    if len(lens) > 1:
        raise ValueError(f"decision lists differ in length: { {m: len(v) for m, v in decisions.items()} }")
    pairs = {}
    for x, y in combinations(names, 2):
        ag = agreement(decisions[x], decisions[y])
        ag["disagreements"] = len(ag.pop("disagree"))
        pairs[f"{x}|{y}"] = ag
    rate = {m: round(sum(map(bool, d)) / len(d), 4) if d else 0.0 for m, d in decisions.items()}
    return {"methods": names, "refusal_rate": rate, "pairs": pairs}


def compare_methods(responses, methods, prompts=None, langs=None) -> dict:
    """Judge `responses` with every method (lab methods and judge:<model>) and report agreement;
    'disagreements' lists the indices where the methods do not all agree, with each method's verdict."""
    from . import detect_batch

    verdicts = {m: detect_batch(responses, prompts, langs, m) for m in methods}
    rep = agreement_report({m: [v.refusal for v in vs] for m, vs in verdicts.items()})
    rep["disagreements"] = [
        {"index": i, "verdicts": {m: verdicts[m][i].to_dict() for m in methods}}
        for i in range(len(responses)) if len({verdicts[m][i].refusal for m in methods}) > 1
    ]
    return rep
