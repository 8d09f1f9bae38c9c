"""The quickstart, back to back in one run: `--workers 1`, the default `--workers auto` with its workers spawned
(LAB_WORKER_START=spawn, the start before the forkserver), and the default as shipped (workers forked from a
forkserver that imported the libraries once), each with an empty evaluation cache (the aligned state computed).
Prints a table and writes benchmarks/results/quickstart_workers.json: wall and CPU seconds of the whole command (CPU
not for the forkserver run: its workers are the forkserver's children, whose CPU time does not reach this process),
seconds inside the run, and whether the three runs' generations.jsonl (answers, verdicts, margins) are byte-identical
and their metrics equal.

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


def run(label: str, workers: str, root: Path, start: str = "forkserver") -> dict:
    out, cache = root / label, root / f"{label}-cache"
    env = {**os.environ, "LAB_CACHE": str(cache), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline",
           "LAB_WORKER_START": start}
    env.pop("LAB_WORKERS", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.time()
    subprocess.run([sys.executable, "-m", "lab", "run", "recipes/quickstart.yaml", "--out", str(out), "--workers", workers,
                    "-q"], cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.time() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    cpu = round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 1)
    forked = workers != "1" and start == "forkserver"  # the forkserver reaps its workers: their CPU never reaches us
    return {"workers": workers, "start": start if workers != "1" else "-", "wall_s": round(wall, 1),
            "cpu_s": None if forked else cpu,
            "in_run_s": m["timings"]["wall_seconds"], "out": str(out), "models": m["models"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None, help="scratch folder (default: a temporary one)")
    a = ap.parse_args()
    root = a.out or Path(tempfile.mkdtemp(prefix="lab-qs-"))
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    one, spawned, auto = run("w1", "1", root), run("spawn", "auto", root, "spawn"), run("auto", "auto", root)
    gens = lambda r: (Path(r["out"]) / "generations.jsonl").read_bytes()
    res = {"runs": [{k: v for k, v in r.items() if k not in ("models", "out")} for r in (one, spawned, auto)],
           "wall_ratio_auto_vs_1": round(auto["wall_s"] / one["wall_s"], 3),
           "wall_ratio_forkserver_vs_spawn": round(auto["wall_s"] / spawned["wall_s"], 3),
           "generations_identical": gens(one) == gens(auto) == gens(spawned),
           "metrics_equal": one["models"] == auto["models"] == spawned["models"],
           "cpus": os.cpu_count(), "load_at_end": os.getloadavg()}
    print(f"{'workers':>8} {'start':>11} {'wall s':>8} {'cpu s':>8} {'in run s':>9}")
    for r in res["runs"]:
        cpu = "-" if r["cpu_s"] is None else r["cpu_s"]
        print(f"{r['workers']:>8} {r['start']:>11} {r['wall_s']:>8} {cpu:>8} {r['in_run_s']:>9}")
    print(f"auto / 1 wall: {res['wall_ratio_auto_vs_1']}; forkserver / spawn wall: {res['wall_ratio_forkserver_vs_spawn']}; "
          f"generations identical: {res['generations_identical']}; metrics equal: {res['metrics_equal']}")
    dest = REPO / "benchmarks" / "results" / "quickstart_workers.json"
    dest.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    print(f"-> {dest}")


if __name__ == "__main__":
    main()
