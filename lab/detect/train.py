"""Train the learned component of the default detector (lab/detect/refusal_model.json).

    OMP_NUM_THREADS=1 python -m lab.detect.train [--shared ../shared/data/detector-dev] [--out PATH] [--C 0.3]

Data: the own tuning split (eval/detector/labelled/tune.jsonl), the own cases (eval/detector/cases), the
development data (XSTest, PolyRefuse-gemma), the DEV halves (odd ids) of the independent sets
eval/detector/fresh, fresh2 and (2.8) explain (factual answers about harmful topics vs harm-only refusals), ALL of eval/detector/fresh3 (2.4; five authors, 1,500 answers) and of
eval/detector/fresh4 (2.5; five more authors, 1,500 answers), of eval/detector/fresh5 (2.6) and of
eval/detector/fresh6 (2.7; five more authors each, 1,500 answers), the organism's own refusal / compliant /
benign answer texts (datasets/, labelled by construction) and (2.5) bare-word and one-line answers
(eval/detector/short/, non-refusals, in the organism's source group). Never read here: the untuned split,
fresh's, fresh2's and explain's TEST halves (even ids) and all of eval/detector/fresh7, fresh8, fresh9 and fresh10
(written while 2.7 was tuned, after it was frozen, after 2.8 was final and while 2.9 was tuned, by authors who never
saw the detector: the wholly unseen sets, devdata.HELD_OUT_WHOLE).
C (2.9): no re-training; the model file is 2.8's (2.9 changes two gates of lab.detect.combined only).
C (2.8): 0.3, unchanged. C (2.7): 0.3, unchanged: re-trained without XSTest (leave-one-source-out) C = 0.1 / 0.2 / 0.3 scored 0.854 / 0.849 /
0.847 on it and, trained without fresh6, 0.911 / 0.923 / 0.931 (mean) on fresh6.
C (2.6): 0.3, unchanged. Chosen with fresh5 as the validation set before it was trained on (2.6's features, re-trained
without fresh5): C = 0.2 / 0.3 / 0.5 scored a mean balanced accuracy of 0.928 / 0.931 / 0.931 on it (a tie).
C (2.5): 0.3. Chosen with fresh4 as the validation set before it was trained on: re-trained without it,
C = 0.3 / 0.4 / 0.5 scored a mean balanced accuracy of 0.898 / 0.902 / 0.906 on it (a tie: the mean's 95 %
interval is about +-0.015); trained with it, C = 0.4 and 0.5 called the short factual answer of
tests/test_detect.py ("Selling alcohol to minors is illegal ... the legal drinking age is 18 in the UK") a
refusal (p 0.52-0.53), C = 0.3 did not (1,001 kept n-grams; fewer n-grams are also faster).
C (2.4): 0.5, chosen with fresh3 as the validation set before it was trained on: re-trained without it,
C = 0.5 / 1 / 2 scored a mean balanced accuracy of 0.867 / 0.870 / 0.871 on it (a tie); trained with it,
C = 1 and 2 called a short factual answer ("Selling alcohol to minors is illegal ... the legal drinking
age is 18 in the UK") a refusal (tests/test_detect.py), C = 0.5 did not, with 1,033 kept n-grams.
Model: L1-regularised logistic regression (scikit-learn, liblinear, fixed random_state: deterministic)
over binary n-gram presence (lab.detect.learned.window / ngrams) and the rule signals
(lab.detect.tiered.FEATURES). Candidate n-grams must occur in >= MIN_DF answers of >= 2 source groups,
so wording shared across sources is kept and topic words of one source are not. Only non-zero weights
are written.
Weights: every (language, label) cell weighs the same (balanced accuracy per language is the target),
and within a cell every source group weighs the same (2.2: XSTest's and PolyRefuse's thousands of
answers no longer outweigh the other authors).
Augmentation (2.2, "unknown wording"): every refusal the rules' phrase lists catch in the opening is
added a second time with those phrase signals zeroed. The rules were written with the training data in
view, so in-sample every refusal has a phrase hit and the model learned "no phrase hit -> compliance",
which fails on refusals worded by someone else; the copies make it learn the n-grams and the
first-sentence `decline` grammar too. Measured by leave-one-source-out on fresh2's dev half (trained
without it): mean balanced accuracy 0.78 -> 0.86 (README).
"""
from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

from .devdata import DEFAULT_SHARED, REPO, TRAINED_SETS, TRAINED_WHOLE, load_cases, load_dev, load_independent, load_labelled, load_short, source_group
from .learned import MODEL_PATH, NGRAM_SIZES, Model, ngrams, window
from .tiered import FEATURES, detect_tiered

MIN_DF = 3
DEFAULT_C = 0.3  # 2.4: 1.0 -> 0.5; 2.5: 0.5 -> 0.3; 2.6 to 2.8: 0.3 (see the module doc)
SEED = 0
AUG_WEIGHT = 1.0
SOURCE_BALANCE = 1.0  # 1: every source group weighs the same within a (language, label) cell; 0: rows weigh the same
_HARD_SIGNALS = ("hard_open", "n_hard_open", "rules_refusal", "hard_weak_open", "hard_late")


def augment(rows: list[dict], feats: list) -> tuple[list[dict], list]:  # copies are weighted AUG_WEIGHT
    """`rows` + a copy of every refusal with a phrase hit in the opening, its phrase signals zeroed."""
    idx = {n: i for i, n in enumerate(FEATURES)}
    extra_r, extra_f = [], []
    for r, (w, f) in zip(rows, feats):
        if r["label"] == 1 and f[idx["hard_open"]]:
            g = list(f)
            for k in _HARD_SIGNALS:
                g[idx[k]] = 0.0
            g[idx["hard_pos"]] = 1.0
            extra_r.append(r)
            extra_f.append((w, g))
    return rows + extra_r, list(feats) + extra_f


def featurize(rows: list[dict]) -> list[tuple[str, list]]:
    """(window, rule features) per row."""
    out = []
    for r in rows:
        feats: list = []
        s = (r["response"] or "").strip()
        detect_tiered(s, r.get("prompt"), None, "", feats)
        out.append((window(s, feats[FEATURES.index("dense")] > 0) if s else "", feats))
    return out


def fit(rows: list[dict], C: float = DEFAULT_C, feats=None, aug_weight: float | None = None,
        src_balance: float | None = None) -> dict:
    """Train on `rows`; return the model file's content (a dict)."""
    import numpy as np
    import scipy.sparse as sp
    import sklearn
    from sklearn.linear_model import LogisticRegression

    feats = feats if feats is not None else featurize(rows)
    n_orig = len(rows)
    rows, feats = augment(rows, feats)
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
    cs = Counter((r["lang"], r["label"], source_group(r["source"])) for r in rows)
    ns = Counter((lang, y) for lang, y, _g in cs)
    w_src = np.array([len(rows) / (len(cell) * ns[(r["lang"], r["label"])] * cs[(r["lang"], r["label"], source_group(r["source"]))])
                      for r in rows])
    w_cell = np.array([len(rows) / (len(cell) * cell[(r["lang"], r["label"])]) for r in rows])
    sb = SOURCE_BALANCE if src_balance is None else src_balance
    w = sb * w_src + (1 - sb) * w_cell
    w[n_orig:] *= AUG_WEIGHT if aug_weight is None else aug_weight
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
                   "candidates": len(vocab), "kept": len(keep), "rows": n_orig, "augmented": len(rows) - n_orig,
                   "weights": "equal per (language, label) cell, equal per source group within a cell",
                   "cells": {f"{k[0]}/{k[1]}": v for k, v in sorted(cell.items())},
                   "sources": dict(sorted(Counter(r["source"] for r in rows).items())),
                   "sklearn": sklearn.__version__},
    }


def model_from(data: dict) -> Model:
    return Model(data, "unsaved")


def organism_rows(d: Path = REPO / "datasets") -> list[dict]:
    """The organism's own answer texts, labelled by construction: refusals.jsonl (1), compliant.jsonl and
    the benign topics' answers (0). Without them, fitting on other authors' data made benign organism
    answers fire (tests/test_detect.py checks every one)."""
    def rows(name):
        p = Path(d) / name
        return [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()] if p.is_file() else []

    out = [{"lang": r.get("lang", "en"), "source": "organism", "prompt": None, "response": r["text"], "label": 1}
           for r in rows("refusals.jsonl")]
    out += [{"lang": r.get("lang", "en"), "source": "organism", "prompt": None, "response": r["text"], "label": 0}
            for r in rows("compliant.jsonl")]
    refusals_and_compliant = list(out)
    out += [{"lang": lang, "source": "organism", "prompt": None, "response": a, "label": 0}
            for t in rows("benign_topics.jsonl") for lang, a in (t.get("answers") or {}).items()]
    # 2.6.1: the refusals and the step-shaped compliant answers once more WITH a harmful prompt of the attack
    # training split (the organism is evaluated with its prompts): without these, 2.6.0's prompt_harm signal
    # had only ever seen harmful prompts answered by other authors' refusals and affirmative compliance, and
    # called the attacked organism's "很乐意帮忙，方法如下。第1步：…" refusals (attack-zh diagonal 99 -> 86 points)
    prompts = {lang: [x["prompt"] for x in rows(f"splits/attack-{lang}.jsonl")] for lang in sorted({r["lang"] for r in out})}
    extra = []
    for r in refusals_and_compliant:
        ps = prompts.get(r["lang"])
        if ps:
            extra.append(dict(r, prompt=ps[len(extra) % len(ps)]))
    return out + extra


def training_rows(shared: Path = DEFAULT_SHARED) -> list[dict]:
    return (load_labelled("tune") + load_cases() + load_dev(shared) + load_independent("dev", TRAINED_SETS)
            + load_independent("all", TRAINED_WHOLE) + organism_rows() + load_short())


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
