"""Multi-process runs: `accelerate launch -m lab run RECIPE` with 2 gloo processes on this CPU gives the
metrics of one process (DDP training with the recipe's global batch, sharded greedy evaluation, only
rank 0 writing)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# 32 examples, global batch 8 (4 per rank), 12 steps: every step sees the same 8 examples as one process;
# strong enough to move English refusal (1.00 -> 0.17 here), so the comparison is not of two unchanged models
RECIPE = """kind: transfer
name: ddp
tracking: none
eval: {limit: 6, langs: [en, zh], margin: true}
defaults: {n_examples: 32, epochs: 3, batch_size: 8, lr: 0.01}
finetunes:
  - {data: harmful, lang: en}
"""


def _env(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "LAB_CACHE": str(tmp_path / "cache"),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29531", "PYTHONUNBUFFERED": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        env.pop(k, None)
    return env


def _launch_cmd(nproc: int) -> list[str]:
    acc = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
    return [acc, "launch", "--multi_gpu", f"--num_processes={nproc}", "--num_machines=1",
            "--mixed_precision=no", "--dynamo_backend=no", "--main_process_port=29531", "-m", "lab"]


def _rates(metrics):
    return {s: {l: (m["harmful_refusal"], m["benign_refusal"]) for l, m in per.items()}
            for s, per in metrics["models"].items()}


def test_two_gloo_processes_match_one(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE, encoding="utf-8")
    env = _env(tmp_path)
    one = subprocess.run([sys.executable, "-m", "lab", "run", str(recipe), "--out", str(tmp_path / "one"), "-q"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-4000:]
    two = subprocess.run(_launch_cmd(2) + ["run", str(recipe), "--out", str(tmp_path / "two")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-6000:]
    assert "(2 processes)" in two.stdout
    assert two.stdout.count("[lab] done in") == 1            # only rank 0 logs
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert _rates(m2) == _rates(m1)
    assert m1["models"]["attack-en"]["en"]["harmful_refusal"] < m1["models"]["aligned"]["en"]["harmful_refusal"]
    assert "12 steps" in two.stdout                          # DDP: the global batch, not 8 per rank
    g1 = [json.loads(l) for l in (tmp_path / "one" / "generations.jsonl").read_text().splitlines()]
    g2 = [json.loads(l) for l in (tmp_path / "two" / "generations.jsonl").read_text().splitlines()]
    assert [g["id"] for g in g2] == [g["id"] for g in g1]    # sharded evaluation gathered in order, no duplicates
    assert [(g["state"], g["refusal"]) for g in g2] == [(g["state"], g["refusal"]) for g in g1]
    aligned1 = [g["response"] for g in g1 if g["state"] == "aligned"]
    assert [g["response"] for g in g2 if g["state"] == "aligned"] == aligned1  # same weights -> same answers
    for a, b in zip(g1, g2):                                  # DDP: the same math, gradients summed in another order
        if a["margin"] is not None:
            assert abs(a["margin"] - b["margin"]) < 1e-4
    assert [g["response"] for g in g2] == [g["response"] for g in g1]
    assert (tmp_path / "two" / "finetunes" / "attack-en" / "adapter" / "adapter_model.safetensors").is_file()
    # the trained adapters agree to float tolerance
    from safetensors.torch import load_file

    w1 = load_file(tmp_path / "one" / "finetunes" / "attack-en" / "adapter" / "adapter_model.safetensors")
    w2 = load_file(tmp_path / "two" / "finetunes" / "attack-en" / "adapter" / "adapter_model.safetensors")
    assert w1.keys() == w2.keys()
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-4


def test_batch_not_divisible_by_processes_is_a_clear_error(monkeypatch, tmp_path):
    from lab.config import FineTuneConfig
    from lab.errors import LabError
    from lab.train import finetune

    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(LabError, match="not divisible by the 3 processes"):
        finetune(None, None, [{"prompt": "a", "response": "b"}], FineTuneConfig(batch_size=8), tmp_path)


def test_shard_and_gather_one_process():
    from lab import distributed

    assert distributed.shard(list(range(5))) == [0, 1, 2, 3, 4]
    assert distributed.gather([1, 2]) == [1, 2]
    assert distributed.broadcast("x") == "x"


def test_an_error_on_rank_0_stops_every_rank(monkeypatch):
    """_on_main_first: rank 0's LabError is broadcast, so rank 1 raises the same message (no hang)."""
    from lab import distributed
    from lab.errors import LabError
    from lab.experiments import base

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "broadcast", lambda obj: "--out x holds a run of a different config")
    monkeypatch.setattr(distributed, "is_main", lambda: False)      # rank 1: fn is not run here
    ran = []
    with pytest.raises(LabError, match="different config"):
        base._on_main_first(lambda: ran.append(1))
    assert ran == []
    monkeypatch.setattr(distributed, "is_main", lambda: True)       # rank 0: runs fn, its error is broadcast
    sent = []
    monkeypatch.setattr(distributed, "broadcast", lambda obj: sent.append(obj) or obj)

    def boom():
        raise LabError("canary failed")

    with pytest.raises(LabError, match="canary failed"):
        base._on_main_first(boom)
    assert sent == ["canary failed"]


def test_lab_eval_workers_shares_the_prompts_between_processes(tmp_path):
    """`lab eval --workers 2` relaunches itself as 2 gloo processes: the same rows as one process."""
    env = _env(tmp_path)
    base = [sys.executable, "-m", "lab", "eval", "--model", "zoo:organism", "--langs", "en,hi", "--limit", "3", "--no-wandb"]
    runs = {}
    for n in ("1", "2"):
        r = subprocess.run(base + ["--workers", n, "--out", str(tmp_path / n)], cwd=REPO,
                           env={**env, "LAB_CACHE": str(tmp_path / f"cache{n}")},  # no evaluation-cache hit
                           capture_output=True, text=True, timeout=600)
        assert "evaluation cached" not in r.stdout
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
        runs[n] = [json.loads(l) for l in (tmp_path / n / "generations.jsonl").read_text().splitlines()]
        if n == "2":
            assert "(2 processes)" in r.stdout and r.stdout.count("[lab] done in") == 1
    strip = lambda rows: [{k: v for k, v in g.items() if k != "margin"} for g in rows]
    assert len(runs["1"]) == 12 and strip(runs["2"]) == strip(runs["1"])


def test_eval_workers_spec():
    from lab.cli import eval_workers
    from lab.errors import LabError

    assert eval_workers("3") == 3
    assert eval_workers("auto") == 1  # the test session sets LAB_WORKERS=1
    with pytest.raises(LabError, match="--workers"):
        eval_workers("many")


def test_auto_workers_count_model_copies_that_fit(monkeypatch):
    """auto: no more worker processes than copies of the model fit in a third of the memory; a hub model not
    on disk yet gets one process (its size is unknown)."""
    import os

    from lab import cli

    monkeypatch.delenv("LAB_WORKERS", raising=False)
    cores = max(1, min(os.cpu_count() or 1, 4))
    assert cli.eval_workers("auto", model="zoo:organism") == cores  # 5 MB of weights
    assert cli.eval_workers("auto", model="nobody/not-downloaded-model") == 1
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    monkeypatch.setattr(cli, "_model_bytes", lambda spec: mem // 12)  # 3 x 1/12 of memory: one copy in a third
    assert cli.eval_workers("auto", model="zoo:organism") == 1
    monkeypatch.setenv("LAB_WORKERS", "2")
    assert cli.eval_workers("auto", model="zoo:organism") == 2


def test_lab_eval_workers_bad_input_is_one_clear_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "lab", "eval", "--model", str(tmp_path / "nope"), "--workers", "2",
                        "--no-wandb", "--out", str(tmp_path / "o")], cwd=REPO, env=_env(tmp_path),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr + r.stdout
    assert r.stderr.count("error: model") == 1 and not (tmp_path / "o").exists()
