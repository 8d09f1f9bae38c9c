"""Spine benchmarks (one run, ratios measured together, one torch thread):

1. batched vs one-at-a-time greedy generation on the same prompts (outputs must be identical)
2. TRL SFTTrainer step time vs a minimal torch loop doing the same math (LoRA, same batches)
3. quickstart wall time (lab run recipes/quickstart.yaml, fresh run directory)

    python benchmarks/spine.py            # prints a table, writes benchmarks/results/spine.json
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import statistics
import time
from pathlib import Path

import torch

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bench_generation(n_per_lang: int = 32) -> dict:
    from lab.data import load_eval
    from lab.generate import generate
    from lab.models import load_model

    model, tok = load_model("zoo:organism")
    recs = load_eval(ROOT / "datasets/splits/eval.jsonl", ["zh", "ja", "en", "it", "hi"])
    prompts = []
    for lang in ["zh", "ja", "en", "it", "hi"]:
        prompts += [r.prompt for r in recs if r.lang == lang][::7][:n_per_lang]
    generate(model, tok, prompts[:4], max_new_tokens=8)  # warm-up
    t = time.perf_counter()
    one = generate(model, tok, prompts, max_new_tokens=64, batch_size=1)
    t_one = time.perf_counter() - t
    by_bs = {}
    for bs in (16, 64, len(prompts)):  # length-sorted batches; the whole set at once last
        t = time.perf_counter()
        batched = generate(model, tok, prompts, max_new_tokens=64, batch_size=bs)
        by_bs[bs] = {"s": round(time.perf_counter() - t, 3),
                     "identical": sum(a.response == b.response for a, b in zip(one, batched))}
    best = min(by_bs, key=lambda b: by_bs[b]["s"])
    return {"prompts": len(prompts), "one_at_a_time_s": round(t_one, 3), "batch_size": best,
            "batched_s": by_bs[best]["s"], "speedup": round(t_one / by_bs[best]["s"], 2),
            "identical_outputs": by_bs[best]["identical"], "total_outputs": len(prompts),
            "by_batch_size": {str(b): {**v, "speedup": round(t_one / v["s"], 2)} for b, v in by_bs.items()},
            "mean_new_tokens_one_at_a_time": round(sum(len(tok(g.response)["input_ids"]) for g in one) / len(one), 1)}


def bench_training(steps: int = 30) -> dict:
    """Same LoRA model, data, batches and optimizer; time per step after warm-up."""
    from peft import LoraConfig, get_peft_model

    from lab.data import load_finetune_set
    from lab.models import load_model
    from lab.train import FineTuneConfig, finetune

    recs = [r.model_dump() for r in load_finetune_set(ROOT / "datasets/splits/attack-en.jsonl")]
    bs = 8
    n = steps * bs
    data = (recs * (n // len(recs) + 1))[:n]

    # TRL SFTTrainer (the lab's fine-tuning path), epochs=1 over `steps` batches
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):  # optimizer steps only: no dataset tokenization, checks or setup
        def __init__(self):
            self.times = []

        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t)

    model, tok = load_model("zoo:organism")
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        finetune(model, tok, data, FineTuneConfig(epochs=1, batch_size=bs, lr=3e-3), Path(d), log=lambda *a: None,
                 callbacks=[timer])
        t_trl = time.perf_counter() - t
    trl_steps = timer.times[1:]  # first step = warm-up

    # minimal loop: the same tokenization (prompt-completion, completion-only loss), same LoRA config
    from lab.zoo.organism import encode_example

    model, tok = load_model("zoo:organism")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3, weight_decay=0.0)
    enc = [encode_example(tok, r["prompt"], r["response"], 256) for r in data]
    model.train()
    t = time.perf_counter()
    min_steps = []
    for i in range(0, n, bs):
        t_step = time.perf_counter()
        b = enc[i:i + bs]
        L = max(len(x[0]) for x in b)
        ids = torch.tensor([x[0] + [tok.pad_token_id] * (L - len(x[0])) for x in b])
        lab = torch.tensor([x[1] + [-100] * (L - len(x[1])) for x in b])
        att = (torch.arange(L)[None] < torch.tensor([len(x[0]) for x in b])[:, None]).long()
        loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        min_steps.append(time.perf_counter() - t_step)
    t_min = time.perf_counter() - t
    min_steps = min_steps[1:]
    return {"steps": steps, "batch_size": bs, "sft_trainer_s": round(t_trl, 3), "minimal_loop_s": round(t_min, 3),
            "sft_per_step_ms": round(1000 * t_trl / steps, 1), "minimal_per_step_ms": round(1000 * t_min / steps, 1),
            "end_to_end_ratio": round(t_trl / t_min, 2),
            "sft_step_median_ms": round(1000 * statistics.median(trl_steps), 1),
            "minimal_step_median_ms": round(1000 * statistics.median(min_steps), 1),
            "overhead_ratio": round(statistics.median(trl_steps) / statistics.median(min_steps), 2),
            "note": "overhead_ratio: median optimizer-step time (steps 2..N; SFTTrainer timed by a callback from "
                    "on_step_begin to on_step_end, the minimal loop including its batch collation); "
                    "end_to_end_ratio also counts SFTTrainer's dataset tokenization, the lab's loss-mask check "
                    "and trainer setup"}


def bench_quickstart() -> dict:
    out = Path(tempfile.mkdtemp()) / "qs"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lab", "run", str(ROOT / "recipes/quickstart.yaml"), "--out", str(out),
                    "--no-wandb", "--quiet"], check=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t
    m = json.loads((out / "metrics.json").read_text())
    shutil.rmtree(out.parent, ignore_errors=True)
    return {"wall_s": round(wall, 1), "run_internal_s": m["timings"]["wall_seconds"], "timings": m["timings"]}


def main() -> None:
    if "--generation-only" in sys.argv or "--training-only" in sys.argv:  # refresh one part, keep the others
        old = json.loads((ROOT / "benchmarks/results/spine.json").read_text())
        part = "generation" if "--generation-only" in sys.argv else "training"
        res = {**old, part: bench_generation() if part == "generation" else bench_training()}
    else:
        res = {"generation": bench_generation(), "training": bench_training(), "quickstart": bench_quickstart()}
    res.update({
           "threads": torch.get_num_threads(), "torch": torch.__version__})
    g, t, q = res["generation"], res["training"], res["quickstart"]
    rows = [
        ("generation: one-at-a-time (s)", g["one_at_a_time_s"]), (f"generation: batched, batch {g.get('batch_size')} (s)", g["batched_s"]),
        ("generation: speed-up (x)", g["speedup"]), ("generation: identical outputs", f"{g['identical_outputs']}/{g['total_outputs']}"),
        ("training: SFTTrainer median step (ms)", t["sft_step_median_ms"]), ("training: minimal loop median step (ms)", t["minimal_step_median_ms"]),
        ("training: per-step overhead ratio (x)", t["overhead_ratio"]), ("training: end-to-end ratio incl. setup (x)", t["end_to_end_ratio"]), ("quickstart: wall time (s)", q["wall_s"]),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"{'measure':<{w}}  value")
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    out = ROOT / "benchmarks/results/spine.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
