"""The detector's generalization protocol (issue 11): per language, balanced accuracy with 95 % CIs,
every method side by side.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/detector_generalization.py [--json benchmarks/results/detector_generalization.json]

0. independent sets (never read, never fit on): the TEST halves (even ids) of eval/detector/fresh/ (two
   authors, 2.1 round), eval/detector/fresh2/ (five authors, 2.2 round) and eval/detector/explain/ (five authors,
   2.8 round: factual answers about harmful topics vs harm-only refusals), and ALL of eval/detector/fresh7/ (five
   more authors, written while 2.7 was tuned, read only after it was frozen), fresh8/ (written after 2.7 was
   frozen), fresh9/ (written after 2.8 was final) and fresh10/ (written while 2.9 was tuned, read after 2.9.0 was frozen);
   each written by people who never saw the patterns or the model and committed before anything was
   measured on it (eval/detector/fresh3/ to fresh6/, the unseen sets of 2.3 to 2.6, are
   training data since 2.4 to 2.7: their figures are the LOSO entries "fresh3" to "fresh6");
1. untuned own split (eval/detector/labelled/untuned.jsonl): written before any tuning, never fit on;
2. leave-one-source-out: the learned component is re-trained without one source group (LOSO_GROUPS: fresh6 to
   fresh3, fresh2-dev, fresh-dev, own-tune, polyrefuse, xstest, cases) and measured on it; the rules and baselines are measured on the same rows
   (the rules were written with all sources in view, so their LOSO figure is not out-of-sample);
3. development data as a whole (in-sample for `tiered`: shown for reference only).
CIs: 95 % percentile bootstrap of balanced accuracy (scipy.stats.bootstrap, paired over (label,
prediction), 2,000 resamples, seed 0).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lab.detect import DETECTOR_VERSION, METHODS, detect  # noqa: E402
from lab.detect.combined import detect_default  # noqa: E402
from lab.detect.devdata import HELD_OUT_WHOLE, INDEPENDENT_SETS, LANGS, load_dev, load_independent, load_labelled, source_group  # noqa: E402

LOSO_GROUPS = ("fresh6", "fresh5", "fresh4", "fresh3", "fresh2-dev", "fresh-dev", "own-tune", "polyrefuse", "xstest", "cases")


def balanced_accuracy(y, p) -> float:
    y, p = np.asarray(y, bool), np.asarray(p, bool)
    pos, neg = y.sum(), (~y).sum()
    if not pos or not neg:
        return float("nan")
    return 0.5 * ((p & y).sum() / pos + (~p & ~y).sum() / neg)


def ba_ci(y, p, seed: int = 0) -> dict:
    from scipy.stats import bootstrap

    y, p = np.asarray(y, bool), np.asarray(p, bool)
    ba = balanced_accuracy(y, p)
    out = {"n": int(len(y)), "pos": int(y.sum()), "neg": int((~y).sum()), "ba": round(float(ba), 4),
           "tpr": round(float((p & y).sum() / max(1, y.sum())), 4),
           "tnr": round(float((~p & ~y).sum() / max(1, (~y).sum())), 4)}
    if y.sum() < 2 or (~y).sum() < 2 or np.isnan(ba):
        out["ci"] = None
        return out
    if (p == y).all():
        out["ci"] = [1.0, 1.0]
        return out
    res = bootstrap((y, p), lambda a, b: balanced_accuracy(a, b), paired=True, vectorized=False,
                    n_resamples=2000, confidence_level=0.95, method="percentile", random_state=seed)
    lo, hi = res.confidence_interval
    out["ci"] = [round(float(np.nan_to_num(lo, nan=0.0)), 3), round(float(np.nan_to_num(hi, nan=1.0)), 3)]
    return out


def per_lang(rows, preds) -> dict:
    res = {}
    for lang in LANGS:
        idx = [i for i, r in enumerate(rows) if r["lang"] == lang]
        if idx:
            res[lang] = ba_ci([rows[i]["label"] for i in idx], [preds[i] for i in idx])
    return res


def run_methods(rows, methods) -> dict:
    return {m: per_lang(rows, [detect(r["response"], r["prompt"], method=m).refusal for r in rows]) for m in methods}


def loso(methods) -> dict:
    from lab.detect.train import featurize, fit, model_from, training_rows

    rows = training_rows()
    feats = featurize(rows)
    groups = [source_group(r["source"]) for r in rows]
    out = {}
    for g in LOSO_GROUPS:
        tr = [i for i in range(len(rows)) if groups[i] != g]
        te = [i for i in range(len(rows)) if groups[i] == g]
        model = model_from(fit([rows[i] for i in tr], feats=[feats[i] for i in tr]))
        held = [rows[i] for i in te]
        res = {"tiered (re-trained without it)": per_lang(
            held, [detect_default(r["response"], r["prompt"], None, "", model).refusal for r in held])}
        res.update(run_methods(held, [m for m in methods if m != "tiered"]))
        out[g] = res
        print(f"  LOSO {g}: {len(te)} rows held out", file=sys.stderr)
    return out


def by_behaviour(rows, preds) -> dict:
    """{(behaviour, label): (n, errors)} of one method's predictions (rows without a behaviour: "-")."""
    out: dict = {}
    for r, p in zip(rows, preds):
        key = (r.get("behaviour") or "-", r["label"])
        n, k = out.get(key, (0, 0))
        out[key] = (n + 1, k + int(bool(p) != bool(r["label"])))
    return out


def cell(r) -> str:
    if r is None:
        return "-"
    ci = r.get("ci")
    return f"{r['ba']:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{r['ba']:.3f}"


def table(res: dict) -> str:
    methods = list(res)
    langs = [lang for lang in LANGS if any(lang in res[m] for m in methods)]
    lines = ["| lang | n (ref/not) | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for lang in langs:
        first = next(res[m][lang] for m in methods if lang in res[m])
        lines.append(f"| {lang} | {first['n']} ({first['pos']}/{first['neg']}) | "
                     + " | ".join(cell(res[m].get(lang)) for m in methods) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "detector_generalization.json"))
    ap.add_argument("--no-loso", action="store_true")
    ap.add_argument("--only", default=None, help=f"print one independent set's table only ({', '.join(INDEPENDENT_SETS)})")
    ap.add_argument("--half", default="test", choices=["dev", "test", "all"])
    ap.add_argument("--only-json", default=None, help="with --only: write its tables (and errors by behaviour) here")
    a = ap.parse_args(argv)
    methods = list(METHODS)
    results = {"detector_version": DETECTOR_VERSION, "python": platform.python_version(),
               "ci": "95% percentile bootstrap of balanced accuracy (scipy.stats.bootstrap, 2000, seed 0)"}
    if a.only:  # one independent set, one half: e.g. --only fresh4 --half all (a set no model was fit on)
        rows = load_independent(a.half, (a.only,))
        res = run_methods(rows, methods)
        print(f"lab.detect {DETECTOR_VERSION}\n\n{a.only}, half {a.half}: balanced accuracy [95% CI]")
        print(table(res))
        errors = by_behaviour(rows, [detect(r["response"], r["prompt"]).refusal for r in rows])
        print(f"\n{methods[0]}: errors by behaviour (label: refusal 1 / not 0)\n| behaviour | label | n | errors |\n|---|---|---|---|")
        for (beh, lab), (n, k) in sorted(errors.items(), key=lambda kv: (-kv[1][1], kv[0])):
            print(f"| {beh} | {lab} | {n} | {k} |")
        if a.only_json:
            from lab.data import atomic_write_text

            out = {"detector_version": DETECTOR_VERSION, "set": a.only, "half": a.half, "n": len(rows),
                   "ci": results["ci"], "results": res,
                   "errors_by_behaviour": {f"{b}|{lab}": {"n": n, "errors": k} for (b, lab), (n, k) in errors.items()}}
            atomic_write_text(Path(a.only_json), json.dumps(out, ensure_ascii=False, indent=1) + "\n")
            print(f"\nwrote {a.only_json}")
        return 0
    fresh, fresh2 = load_independent("test", ("fresh",)), load_independent("test", ("fresh2",))
    explain = load_independent("test", ("explain",))  # 2.8: factual answers about harmful topics vs harm-only refusals
    held = {name: load_independent("all", (name,)) for name in HELD_OUT_WHOLE}  # held out whole: both halves
    what = {"fresh7": "written while 2.7 was tuned, read after 2.7.0 was frozen",
            "fresh8": "written after 2.7.0 was frozen", "fresh9": "written after 2.8.0 was final",
            "fresh10": "written while 2.9 was tuned, read after 2.9.0 was frozen",
            "fresh11": "written after 2.9 was final; hard behaviours weighted up"}
    sets = [("fresh", fresh, "fresh (2 authors)"), ("fresh2", fresh2, "fresh2 (5 authors)"),
            ("explain", explain, "explain (5 authors; factual answers about harmful topics vs harm-only refusals)")]
    sets += [(name, rows, f"{name} (5 authors; ALL of it: {what.get(name, 'never read by the trainer')})")
             for name, rows in held.items()]
    sets += [("independent", fresh + fresh2 + explain + [r for rows in held.values() for r in rows], "all together")]
    for key, rows, label in sets:
        if rows:
            results[key] = run_methods(rows, methods)
            print(f"lab.detect {DETECTOR_VERSION}\n\n0. independent test half, {label} (never read, never fit on): "
                  "balanced accuracy [95% CI]")
            print(table(results[key]))
    untuned = load_labelled("untuned")
    results["untuned"] = run_methods(untuned, methods)
    print(f"lab.detect {DETECTOR_VERSION}\n\n1. untuned own split: balanced accuracy [95% CI]")
    print(table(results["untuned"]))
    dev = load_dev()
    if dev:
        results["dev_in_sample"] = run_methods(dev, methods)
        print("\n3. development data (in-sample for tiered)")
        print(table(results["dev_in_sample"]))
        if not a.no_loso:
            results["loso"] = loso(methods)
            for g, res in results["loso"].items():
                print(f"\n2. leave-one-source-out: held out {g}")
                print(table(res))
    from lab.data import atomic_write_text

    atomic_write_text(Path(a.json), json.dumps(results, ensure_ascii=False, indent=1) + "\n")
    print(f"\nwrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
