"""Spine benchmarks (one run, ratios measured together, one torch thread):

1. batched vs one-at-a-time greedy generation on the same prompts (outputs must be identical)
2. TRL SFTTrainer step time vs a minimal torch loop doing the same math (LoRA, same batches)
3. one state's evaluation before (engine="hf") / after the speed work, rows identical
4. new tokens/s vs the model's FLOP per token and one core's measured matmul throughput
5. the compact engine's in-place KV cache vs the concatenating cache, full held-out set, outputs identical
6. quickstart wall time (--quickstart: lab run recipes/quickstart.yaml, fresh run directory)

    python benchmarks/spine.py [--generation-only|--eval-only|--training-only|--kv_cache-only] [--quickstart]
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


def _matmul_gflops(n: int = 1024, reps: int = 7) -> float:
    """Measured fp32 matmul throughput of one core (median of reps, n x n @ n x n)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(ts) / 1e9


def _flop_per_token(model) -> float:
    """2 x (weights a generated token multiplies): every linear weight incl. the LM head; embedding lookup free."""
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 2.0 * n


def _sample_prompts(n_per_lang: int):
    from lab.data import load_eval

    recs = load_eval(ROOT / "datasets/splits/eval.jsonl", LANGS)
    prompts = []
    for lang in LANGS:
        prompts += [r.prompt for r in recs if r.lang == lang][::7][:n_per_lang]
    return prompts


LANGS = ["zh", "ja", "en", "it", "hi"]


def bench_generation(n_per_lang: int = 32, mnt: int = 64) -> dict:
    """One-at-a-time greedy (transformers' generate, batch 1) vs batched: hf engine and the compact engine."""
    from lab.generate import generate, generate_one_at_a_time
    from lab.models import load_model

    model, tok = load_model("zoo:organism")
    prompts = _sample_prompts(n_per_lang)
    generate(model, tok, prompts[:4], max_new_tokens=8)  # warm-up
    t = time.perf_counter()
    one = generate_one_at_a_time(model, tok, prompts, max_new_tokens=mnt)
    t_one = time.perf_counter() - t
    ref = [(g.response, g.truncated) for g in one]
    new_tokens = sum(g.new_tokens for g in one)
    by = {}
    for engine, bs in (("hf", 64), ("compact", 64), ("compact", 256)):
        t = time.perf_counter()
        got = generate(model, tok, prompts, max_new_tokens=mnt, batch_size=bs, engine=engine)
        dt = time.perf_counter() - t
        by[f"{engine}/{bs}"] = {"s": round(dt, 3), "speedup_vs_one": round(t_one / dt, 2),
                                "identical": sum(a == (g.response, g.truncated) for a, g in zip(ref, got)),
                                "new_tokens_per_s": round(new_tokens / dt)}
    best = min((k for k in by if k.startswith("compact")), key=lambda k: by[k]["s"])
    fpt = _flop_per_token(model)
    peak = _matmul_gflops()
    tps = by[best]["new_tokens_per_s"]
    return {"prompts": len(prompts), "max_new_tokens": mnt, "new_tokens": new_tokens, "one_at_a_time_s": round(t_one, 3),
            "by_engine": by, "best": best, "identical_outputs": by[best]["identical"], "total_outputs": len(prompts),
            "speedup": by[best]["speedup_vs_one"], "speedup_vs_hf_batched": round(by["hf/64"]["s"] / by[best]["s"], 2),
            "flop_per_token_M": round(fpt / 1e6, 2), "matmul_gflops_one_core": round(peak, 1),
            "new_tokens_per_s": tps, "useful_gflops": round(tps * fpt / 1e9, 2),
            "fraction_of_matmul_peak": round(tps * fpt / 1e9 / peak, 4),
            "note": "useful GFLOP/s = new tokens/s x FLOP per token (linear weights incl. LM head; prefill, attention "
                    "and padding not counted); matmul peak = one-core fp32 1024^2 matmul measured in the same run"}


def bench_eval(limit: int = 64) -> dict:
    """One state's evaluation (generation + detector + margin), pre-speed path (engine='hf': per language,
    transformers' generate, batch 64, full-logits margin) vs now (one compact stream, sliced margin)."""
    from lab.data import load_eval
    from lab.evaluate import evaluate_model
    from lab.models import load_model

    recs = load_eval(ROOT / "datasets/splits/eval.jsonl", LANGS, limit)
    out = {"prompts": len(recs), "limit_per_kind": limit}
    for spec in ("zoo:organism", "zoo:organism-base"):  # short refusals; long step-shaped answers
        model, tok = load_model(spec)
        t = time.perf_counter()
        old = evaluate_model(model, tok, recs, state="s", langs=LANGS, engine="hf", batch_size=64, log=lambda *a: None)
        t_old = time.perf_counter() - t
        t = time.perf_counter()
        new = evaluate_model(model, tok, recs, state="s", langs=LANGS, log=lambda *a: None)
        t_new = time.perf_counter() - t
        strip = lambda row: {k: v for k, v in row.items() if k != "margin"}  # noqa: E731
        dm = [abs(a["margin"] - b["margin"]) for a, b in zip(old.generations, new.generations) if a["margin"] is not None]
        out[spec] = {"before_s": round(t_old, 2), "after_s": round(t_new, 2), "speedup": round(t_old / t_new, 2),
                     "rows_identical": sum(strip(a) == strip(b) for a, b in zip(old.generations, new.generations)),
                     "rows": len(new.generations), "margin_max_abs_diff": max(dm, default=0.0),
                     "note": "rows compared without the margin, which the shared-prompt KV path computes to float "
                             "rounding of the full-logits path (margin_max_abs_diff)"}
    return out


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

    def run_trainer(loss_head: str):
        """lab.train.finetune with TRL's fused log-prob head ("trl") or the lab's default ("model": the
        model's own cross-entropy, LM head only at labelled positions)."""
        model, tok = load_model("zoo:organism")
        timer = StepTimer()
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            finetune(model, tok, data, FineTuneConfig(epochs=1, batch_size=bs, lr=3e-3, loss_head=loss_head), Path(d),
                     log=lambda *a: None, callbacks=[timer])
            return time.perf_counter() - t, timer.times[1:]  # first step = warm-up

    t_trl, trl_steps = run_trainer("trl")
    t_plain, plain_steps = run_trainer("model")

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
            "plain_loss_sft_step_median_ms": round(1000 * statistics.median(plain_steps), 1),
            "plain_loss_overhead_ratio": round(statistics.median(plain_steps) / statistics.median(min_steps), 2),
            "plain_loss_end_to_end_s": round(t_plain, 3),
            "note": "sft_*: TRL's SFTTrainer with its fused log-prob head (loss_head: trl); plain_loss_*: the lab's "
                    "default trainer (loss_head: model: the model's own cross-entropy, LM head only at labelled "
                    "positions). overhead_ratio: median optimizer-step time (steps 2..N; SFTTrainer timed by a callback from "
                    "on_step_begin to on_step_end, the minimal loop including its batch collation); "
                    "end_to_end_ratio also counts SFTTrainer's dataset tokenization, the lab's loss-mask check "
                    "and trainer setup"}


def bench_kv_cache(rounds: int = 2) -> dict:
    """The compact engine on every held-out prompt (1,920) of an attacked organism (the quickstart's attack-en
    LoRA, trained here: long compliant answers) and of organism-base: the in-place cache
    (lab.generate.GrowingLayer) vs the concatenating DynamicCache, alternated `rounds` times (the machine's
    speed drifts); outputs must be identical."""
    from lab.config import FineTune
    from lab.models import load_model
    from lab.train import finetune

    out = {}
    model, tok = load_model("zoo:organism")
    ft = FineTune(data="harmful", lang="en", lr=3e-3, epochs=8, batch_size=8, n_examples=100)
    with tempfile.TemporaryDirectory() as d:
        model = finetune(model, tok, ft.load_records(), ft.train_config(), Path(d), log=lambda *a: None)
    out["attack-en"] = _kv_cache_ab(model, tok, rounds)
    out["zoo:organism-base"] = _kv_cache_ab(*load_model("zoo:organism-base"), rounds)
    return out


def _kv_cache_ab(model, tok, rounds: int) -> dict:
    import lab.generate as G
    from lab.data import load_eval
    from lab.evaluate import auto_max_new_tokens

    recs = load_eval(ROOT / "datasets/splits/eval.jsonl", LANGS)
    prompts, budgets = [r.prompt for r in recs], [auto_max_new_tokens(tok, r.lang) for r in recs]
    times: dict[str, list] = {"concatenating": [], "in_place": []}
    outs = {}
    try:
        for _ in range(rounds):
            for name, flag in (("concatenating", False), ("in_place", True)):
                G.IN_PLACE_CACHE = flag
                t = time.perf_counter()
                outs[name] = G.generate(model, tok, prompts, max_new_tokens=budgets, batch_size=256)
                times[name].append(round(time.perf_counter() - t, 2))
    finally:
        G.IN_PLACE_CACHE = True
    a, b = outs["concatenating"], outs["in_place"]
    best = {k: min(v) for k, v in times.items()}
    return {"prompts": len(prompts), "new_tokens": sum(g.new_tokens for g in b), "seconds": times,
            "speedup": round(best["concatenating"] / best["in_place"], 2),
            "identical": sum((x.response, x.stop) == (y.response, y.stop) for x, y in zip(a, b)), "total": len(b)}


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
    parts = {"generation": bench_generation, "eval": bench_eval, "training": bench_training, "kv_cache": bench_kv_cache}
    only = [p for p in parts if f"--{p}-only" in sys.argv]  # refresh parts, keep the others
    out = ROOT / "benchmarks/results/spine.json"
    res = json.loads(out.read_text()) if only and out.is_file() else {}
    for name in only or parts:
        res[name] = parts[name]()
    if "--quickstart" in sys.argv:
        res["quickstart"] = bench_quickstart()
    res.update({"threads": torch.get_num_threads(), "torch": torch.__version__,
                "load_average_after": list(os.getloadavg())})
    g, e, t = res.get("generation", {}), res.get("eval", {}), res.get("training", {})
    rows = []
    if g:
        rows += [("generation: one-at-a-time, 160 prompts (s)", g["one_at_a_time_s"])]
        rows += [(f"generation: {k} (s, x vs one-at-a-time, identical)",
                  f"{v['s']} s, {v['speedup_vs_one']}x, {v['identical']}/{g['total_outputs']}") for k, v in g["by_engine"].items()]
        rows += [("generation: compact vs hf batched (x)", g["speedup_vs_hf_batched"]),
                 ("generation: new tokens/s (best compact)", g["new_tokens_per_s"]),
                 ("generation: useful GFLOP/s vs one-core matmul GFLOP/s",
                  f"{g['useful_gflops']} / {g['matmul_gflops_one_core']} = {g['fraction_of_matmul_peak']:.1%}")]
    for spec in ("zoo:organism", "zoo:organism-base"):
        if spec in e:
            v = e[spec]
            rows.append((f"evaluation of one state, {spec}, {e['prompts']} prompts: before / after (s)",
                         f"{v['before_s']} / {v['after_s']} = {v['speedup']}x, rows identical {v['rows_identical']}/{v['rows']}"
                         f", margins within {v.get('margin_max_abs_diff', float('nan')):.1e}"))
    if t:
        rows += [("training: SFTTrainer, TRL's fused head (loss_head: trl) / minimal loop, median step (ms)",
                  f"{t['sft_step_median_ms']} / {t['minimal_step_median_ms']} = {t['overhead_ratio']}x"),
                 ("training: the lab's trainer (loss_head: model) / minimal loop, median step (ms)",
                  f"{t['plain_loss_sft_step_median_ms']} / {t['minimal_step_median_ms']} = {t['plain_loss_overhead_ratio']}x"),
                 ("training: end-to-end ratio incl. setup (x)", t["end_to_end_ratio"])]
    for name, k in res.get("kv_cache", {}).items():
        rows.append((f"generation: in-place vs concatenating KV cache, {k['prompts']} prompts, {name} (s, best of "
                     f"{len(k['seconds']['in_place'])})", f"{min(k['seconds']['concatenating'])} / {min(k['seconds']['in_place'])}"
                     f" = {k['speedup']}x, identical {k['identical']}/{k['total']}"))
    if "quickstart" in res:
        rows.append(("quickstart: wall time (s)", res["quickstart"]["wall_s"]))
    w = max(len(r[0]) for r in rows)
    print(f"{'measure':<{w}}  value")
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
