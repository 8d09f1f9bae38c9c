"""The quickstart, back to back in one run: `--workers 1` vs the default `--workers auto`, each with an empty
evaluation cache (the aligned state computed). Prints a table and writes benchmarks/results/quickstart_workers.json:
wall and CPU seconds of the whole command, seconds inside the run, and whether the two runs' generations.jsonl
(answers, verdicts, margins) are byte-identical and their metrics equal.

    python benchmarks/quickstart_workers.py [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(label: str, workers: str, root: Path) -> dict:
    out, cache = root / label, root / f"{label}-cache"
    env = {**os.environ, "LAB_CACHE": str(cache), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    env.pop("LAB_WORKERS", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.time()
    subprocess.run([sys.executable, "-m", "lab", "run", "recipes/quickstart.yaml", "--out", str(out), "--workers", workers,
                    "-q"], cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.time() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    return {"workers": workers, "wall_s": round(wall, 1), "cpu_s": round(after.ru_utime - before.ru_utime
                                                                         + after.ru_stime - before.ru_stime, 1),
            "in_run_s": m["timings"]["wall_seconds"], "out": str(out), "models": m["models"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None, help="scratch folder (default: a temporary one)")
    a = ap.parse_args()
    root = a.out or Path(tempfile.mkdtemp(prefix="lab-qs-"))
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    one, auto = run("w1", "1", root), run("auto", "auto", root)
    same = (Path(one["out"]) / "generations.jsonl").read_bytes() == (Path(auto["out"]) / "generations.jsonl").read_bytes()
    res = {"runs": [{k: v for k, v in r.items() if k not in ("models", "out")} for r in (one, auto)],
           "wall_ratio_auto_vs_1": round(auto["wall_s"] / one["wall_s"], 3),
           "generations_identical": same, "metrics_equal": one["models"] == auto["models"],
           "cpus": os.cpu_count(), "load_at_end": os.getloadavg()}
    print(f"{'workers':>8} {'wall s':>8} {'cpu s':>8} {'in run s':>9}")
    for r in res["runs"]:
        print(f"{r['workers']:>8} {r['wall_s']:>8} {r['cpu_s']:>8} {r['in_run_s']:>9}")
    print(f"auto / 1 wall: {res['wall_ratio_auto_vs_1']}; generations identical: {same}; metrics equal: {res['metrics_equal']}")
    dest = REPO / "benchmarks" / "results" / "quickstart_workers.json"
    dest.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    print(f"-> {dest}")


if __name__ == "__main__":
    main()
