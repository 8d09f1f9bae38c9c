"""Benchmark the refusal detector: per-language balanced accuracy and refusal-F1 of every method on
the dev data (../shared/data/detector-dev, if present) plus the project's own labelled cases
(eval/detector/cases/*.jsonl), and throughput (responses/sec on one core, JSONL in and out).

    PYTHONPATH=. python benchmarks/detector.py [--shared PATH] [--json benchmarks/results/detector.json]

(The generalization protocol -- untuned own split, leave-one-source-out, CIs -- is
benchmarks/detector_generalization.py; this script is the in-sample table and the throughput.)

Labels: xstest `2_full_refusal` and `3_partial_refusal` -> refusal (1), `1_full_compliance` -> 0;
polyrefuse-gemma `wildguard.refusal` (1 refusal / 0 not; missing labels skipped); own cases `label`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lab.detect import DETECTOR_VERSION, METHODS, detect  # noqa: E402
from lab.detect.devdata import load_cases as _load_cases, load_polyrefuse, load_xstest  # noqa: E402,F401
from lab.detect.io import detect_file  # noqa: E402

DEFAULT_SHARED = REPO.parent / "shared" / "data" / "detector-dev"
CASES_DIR = REPO / "eval" / "detector" / "cases"
LANGS = ("zh", "ja", "en", "it", "hi")


def load_cases(d: Path = CASES_DIR) -> list[dict]:
    return _load_cases(d)


def metrics(labels, preds) -> dict:
    tp = sum(1 for y, p in zip(labels, preds) if y and p)
    tn = sum(1 for y, p in zip(labels, preds) if not y and not p)
    fp = sum(1 for y, p in zip(labels, preds) if not y and p)
    fn = sum(1 for y, p in zip(labels, preds) if y and not p)
    tpr = tp / (tp + fn) if tp + fn else float("nan")
    tnr = tn / (tn + fp) if tn + fp else float("nan")
    prec = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * prec * tpr / (prec + tpr) if (prec + tpr) and tp + fn else 0.0
    return {"n": len(labels), "pos": tp + fn, "neg": tn + fp, "tp": tp, "tn": tn, "fp": fp, "fn": fn,
            "balanced_accuracy": round((tpr + tnr) / 2, 4), "refusal_f1": round(f1, 4),
            "tpr": round(tpr, 4), "tnr": round(tnr, 4)}


def evaluate(rows: list[dict], methods=METHODS) -> dict:
    res = {}
    for lang in LANGS:
        sub = [r for r in rows if r["lang"] == lang]
        if not sub:
            continue
        labels = [r["label"] for r in sub]
        res[lang] = {"sources": sorted({r["source"] for r in sub})}
        for m in methods:
            preds = [detect(r["response"], r["prompt"], method=m).refusal for r in sub]
            res[lang][m] = metrics(labels, preds)
    return res


def throughput(rows: list[dict], min_lines: int = 20000, method: str = "tiered", unique_prompts: bool = False) -> dict:
    """Responses/sec of detect_file (JSONL parse + detect + JSONL write) on this process (one core).
    The input cycles the labelled rows (~4,900), so each prompt recurs about four times and the default's per-prompt
    cache hits; `unique_prompts` appends " (<line number>)" to every prompt, so it never does."""
    lines = []
    i = 0
    while len(lines) < min_lines:
        for r in rows:
            prompt = f"{r['prompt']} ({i})" if unique_prompts and r["prompt"] else r["prompt"]
            lines.append(json.dumps({"id": f"r{i}", "prompt": prompt, "response": r["response"],
                                     "lang": r["lang"]}, ensure_ascii=False))
            i += 1
            if len(lines) >= min_lines:
                break
    with tempfile.TemporaryDirectory() as td:
        inp, outp = os.path.join(td, "in.jsonl"), os.path.join(td, "out.jsonl")
        with open(inp, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
        mb = os.path.getsize(inp) / 1e6
        best = best_cpu = None
        for _ in range(3):
            t0, c0 = time.perf_counter(), time.process_time()
            detect_file(inp, outp, method=method)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            best = dt if best is None else min(best, dt)
            best_cpu = dc if best_cpu is None else min(best_cpu, dc)
    return {"method": method + (" (unique prompts)" if unique_prompts else ""), "responses": len(lines), "input_mb": round(mb, 1), "seconds": round(best, 3),
            "responses_per_sec": int(len(lines) / best),
            "cpu_responses_per_sec": int(len(lines) / max(best_cpu, 1e-9)), "mean_chars": int(sum(len(r["response"]) for r in rows)
                                                                           / max(1, len(rows)))}


def table(res: dict, methods=METHODS) -> str:
    head = "| lang | n (refusal/not) | " + " | ".join(f"{m} BA / F1" for m in methods) + " |"
    sep = "|---|---|" + "---|" * len(methods)
    lines = [head, sep]
    for lang, r in res.items():
        first = r[methods[0]]
        cells = []
        best = max(r[m]["balanced_accuracy"] for m in methods)
        for m in methods:
            ba, f1 = r[m]["balanced_accuracy"], r[m]["refusal_f1"]
            c = f"{ba:.3f} / {f1:.3f}"
            cells.append(f"**{c}**" if ba == best else c)
        lines.append(f"| {lang} | {first['n']} ({first['pos']}/{first['neg']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(DEFAULT_SHARED), help="detector-dev folder")
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "detector.json"))
    ap.add_argument("--no-throughput", action="store_true")
    ap.add_argument("--lines", type=int, default=20000, help="responses per throughput run")
    a = ap.parse_args(argv)
    root = Path(a.shared)
    dev = []
    if root.is_dir():
        dev = load_xstest(root) + load_polyrefuse(root)
    else:
        print(f"note: {root} not found; own cases only", file=sys.stderr)
    cases = load_cases()
    results = {"detector_version": DETECTOR_VERSION, "python": platform.python_version(),
               "dev_plus_cases": evaluate(dev + cases), "cases_only": evaluate(cases),
               "dev_only": evaluate(dev) if dev else {}}
    print(f"lab.detect {DETECTOR_VERSION}: balanced accuracy / refusal-F1, dev data + own cases")
    print(table(results["dev_plus_cases"]))
    print("\nown cases only")
    print(table(results["cases_only"]))
    if not a.no_throughput:
        rows = dev + cases
        import resource

        results["throughput"] = [throughput(rows, min_lines=a.lines, method=m) for m in METHODS]
        results["throughput"].append(throughput(rows, min_lines=a.lines, method=METHODS[0], unique_prompts=True))
        results["load_average"] = os.getloadavg()
        results["cpu_seconds"] = resource.getrusage(resource.RUSAGE_SELF).ru_utime
        print("\nthroughput (detect_file: JSONL in -> detect -> JSONL out, one process, one core)")
        print(f"load average {results['load_average']}")
        print("| method | responses | input MB | seconds | responses/sec (wall) | responses/sec (process CPU time) |")
        print("|---|---|---|---|---|---|")
        for t in results["throughput"]:
            print(f"| {t['method']} | {t['responses']} | {t['input_mb']} | {t['seconds']} | {t['responses_per_sec']:,} "
                  f"| {t['cpu_responses_per_sec']:,} |")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    from lab.data import atomic_write_text

    atomic_write_text(Path(a.json), json.dumps(results, ensure_ascii=False, indent=1) + "\n")
    print(f"\nwrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
