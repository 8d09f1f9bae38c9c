"""Train the learned component of the default detector (lab/detect/refusal_model.json).

    OMP_NUM_THREADS=1 python -m lab.detect.train [--shared ../shared/data/detector-dev] [--out PATH] [--C 0.5]

Data: the own tuning split (eval/detector/labelled/tune.jsonl), the own cases (eval/detector/cases) and
the development data (XSTest, PolyRefuse-gemma). The untuned split and the independent split
(eval/detector/fresh) are never read here (training on the independent split's dev half, 50-60 answers
per language, was tried: Hindi benign answers then fired on n-grams of that tiny sample).
Model: L1-regularised logistic regression (scikit-learn, liblinear, fixed random_state: deterministic)
over binary n-gram presence (lab.detect.learned.window / ngrams) and the rule signals
(lab.detect.tiered.FEATURES). Rows are weighted so that every (language, label) cell weighs the same
(balanced accuracy per language is the target). Candidate n-grams must occur in >= MIN_DF answers of
>= 2 source groups (xstest / polyrefuse / cases / own-tune), so wording shared across sources is kept
and topic words of one source are not. Only non-zero weights are written.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

from .devdata import DEFAULT_SHARED, load_cases, load_dev, load_labelled, source_group
from .learned import MODEL_PATH, NGRAM_SIZES, Model, ngrams, window
from .tiered import FEATURES, detect_tiered

MIN_DF = 3
DEFAULT_C = 0.5
SEED = 0


def featurize(rows: list[dict]) -> list[tuple[str, list]]:
    """(window, rule features) per row."""
    out = []
    for r in rows:
        feats: list = []
        s = (r["response"] or "").strip()
        detect_tiered(s, r.get("prompt"), None, "", feats)
        out.append((window(s, feats[FEATURES.index("dense")] > 0) if s else "", feats))
    return out


def fit(rows: list[dict], C: float = DEFAULT_C, feats=None) -> dict:
    """Train on `rows`; return the model file's content (a dict)."""
    import numpy as np
    import scipy.sparse as sp
    import sklearn
    from sklearn.linear_model import LogisticRegression

    feats = feats if feats is not None else featurize(rows)
    grams_per_row = [set(ngrams(w)) for w, _ in feats]
    df: Counter = Counter()
    srcs: dict = defaultdict(set)
    for r, gs in zip(rows, grams_per_row):
        g_src = source_group(r["source"])
        df.update(gs)
        for g in gs:
            if len(srcs[g]) < 2:
                srcs[g].add(g_src)
    vocab = sorted(g for g, c in df.items() if c >= MIN_DF and len(srcs[g]) >= 2)
    index = {g: i for i, g in enumerate(vocab)}
    indptr, indices = [0], []
    for gs in grams_per_row:
        indices.extend(sorted(index[g] for g in gs if g in index))
        indptr.append(len(indices))
    xg = sp.csr_matrix((np.ones(len(indices)), indices, indptr), shape=(len(rows), len(vocab)))
    xf = sp.csr_matrix(np.array([f for _, f in feats], dtype=float))
    x = sp.hstack([xg, xf], format="csr")
    y = np.array([r["label"] for r in rows])
    cell = Counter((r["lang"], r["label"]) for r in rows)
    w = np.array([len(rows) / (len(cell) * cell[(r["lang"], r["label"])]) for r in rows])
    clf = LogisticRegression(penalty="l1", C=C, solver="liblinear", random_state=SEED, max_iter=2000)
    clf.fit(x, y, sample_weight=w)
    coef = clf.coef_[0]
    gw = coef[: len(vocab)]
    keep = [i for i in np.flatnonzero(gw)]
    return {
        "format": "lab.detect refusal model v1",
        "ngram_sizes": list(NGRAM_SIZES),
        "features": list(FEATURES),
        "ngrams": [vocab[i] for i in keep],
        "ngram_weights": [round(float(gw[i]), 5) for i in keep],
        "feature_weights": [round(float(v), 5) for v in coef[len(vocab):]],
        "bias": round(float(clf.intercept_[0]), 5),
        "record": {"C": C, "penalty": "l1", "solver": "liblinear", "random_state": SEED, "min_df": MIN_DF,
                   "candidates": len(vocab), "kept": len(keep), "rows": len(rows),
                   "cells": {f"{k[0]}/{k[1]}": v for k, v in sorted(cell.items())},
                   "sources": dict(sorted(Counter(r["source"] for r in rows).items())),
                   "sklearn": sklearn.__version__},
    }


def model_from(data: dict) -> Model:
    return Model(data, "unsaved")


def training_rows(shared: Path = DEFAULT_SHARED) -> list[dict]:
    return load_labelled("tune") + load_cases() + load_dev(shared)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(DEFAULT_SHARED))
    ap.add_argument("--out", default=str(MODEL_PATH))
    ap.add_argument("--C", type=float, default=DEFAULT_C)
    a = ap.parse_args(argv)
    rows = training_rows(Path(a.shared))
    data = fit(rows, a.C)
    from lab.data import atomic_write_text

    atomic_write_text(Path(a.out), json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(json.dumps(data["record"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
