"""Peak memory of every attribution method vs model size, on organism-shaped models (random init):
snip (Wei et al.'s per-example estimator), snip-pooled, wanda, actsvd (rank 5 %), sil (two models).

    PYTHONPATH=. python benchmarks/attribution_memory.py [--quick]

Models: Qwen2 config like the organism (4 layers, 4 heads, 2 KV heads (GQA), intermediate = 3 x hidden,
vocab 3000, tied embeddings), hidden size varied so parameters go from ~1 M to ~50 M.
Calibration: 8 batches of 1 sequence x 64 tokens (peak does not depend on the number of batches), loss / Wanda statistics on the last 32 tokens.

How memory is measured (CPU; tracemalloc cannot see torch's allocations): every configuration runs in
a fresh child process with MALLOC_MMAP_THRESHOLD_=65536, so every tensor buffer above 64 KiB is its own
mmap that goes back to the OS when freed and the resident set (RSS) tracks live memory. The child
reads VmRSS before creating the model (after imports and building the batches) as its baseline, builds
the model, resets the kernel's RSS high-water mark (`echo 5 > /proc/self/clear_refs`), runs the
scoring (scores are kept, as a user would keep them), and reads VmHWM. Peak = VmHWM - baseline: it
counts the weights, the gradient buffers, the scores, activations, and everything torch and the
allocator hold — all measured, nothing assumed. `ratio` = peak / (parameters x 4 bytes).

Writes benchmarks/results/attribution_memory.json and prints the table.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "attribution_memory.json"
HIDDEN = [128, 256, 512, 1024]
# (method, layers_per_pass, score dtype): the exact defaults, and the lean settings for big models
MODES = [("snip", None, "float32"), ("snip", 2, "bfloat16"), ("snip-pooled", None, "float32"),
         ("wanda", None, "float32"), ("wanda", None, "bfloat16"), ("actsvd", None, "float32"), ("sil", None, "float32")]
LEAN = {("snip", 2, "bfloat16"), ("wanda", None, "bfloat16")}
# Expected slope of peak vs fp32 model size, from what each method holds (memory.py): the weights (1),
# fp32 buffers/scores (1, scored ~ all params here), float64 Grams (<= 2 for actsvd), a second model (sil)
MAX_SLOPE = {"snip": 2.2, "snip-pooled": 2.2, "wanda": 2.2, "actsvd": 3.5, "sil": 3.2}


def _status(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def child(hidden: int, method: str, layers_per_pass: int | None, score_dtype: str) -> dict:
    import torch

    torch.set_num_threads(1)
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from lab.attribution import scores as S
    from lab.attribution.memory import estimate_from_model

    g = torch.Generator().manual_seed(0)
    B, T, R, NB, V = 1, 64, 32, 8, 3000
    batches = []
    for _ in range(NB):
        ids = torch.randint(3, V, (B, T), generator=g)
        labels = ids.clone()
        labels[:, : T - R] = -100
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    gc.collect()
    base = _status("VmRSS")
    cfg = Qwen2Config(vocab_size=V, hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).float().eval()
    n_params = sum(p.numel() for p in model.parameters())
    gc.collect()
    after_model = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    t0 = time.perf_counter()
    sd = getattr(torch, score_dtype)
    if method == "snip":
        out = S.snip_scores(model, batches, layers_per_pass=layers_per_pass, score_dtype=sd)
    elif method == "snip-pooled":
        out = S.snip_pooled_scores(model, batches, layers_per_pass=layers_per_pass, score_dtype=sd)
    elif method == "wanda":
        out = S.wanda_scores(model, batches, score_dtype=sd)
    elif method == "actsvd":
        from lab.attribution import actsvd

        out = actsvd.actsvd_subspaces(model, batches, 0.05)
    else:  # sil: the attacked model is the aligned one plus a change; both are held
        from lab.attribution import sil

        attacked = Qwen2ForCausalLM(cfg).float().eval()
        with torch.no_grad():
            for pa, pb in zip(attacked.parameters(), model.parameters()):
                pa.copy_(pb + 1e-3 * torch.randn_like(pb))
        out = sil.sil_scores(attacked, model, batches, score_dtype=sd)
    secs = time.perf_counter() - t0
    peak = _status("VmHWM")
    est = estimate_from_model(model, method, batch_size=B, seq_len=T, layers_per_pass=layers_per_pass,
                              score_dtype=sd)
    assert len(out) == 28
    return {"hidden": hidden, "method": method, "layers_per_pass": layers_per_pass, "score_dtype": score_dtype,
            "params": n_params, "fp32_bytes": 4 * n_params, "model_rss": after_model - base,
            "peak": peak - base, "ratio": (peak - base) / (4 * n_params), "estimate": est.peak,
            "seconds": round(secs, 2)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", nargs=4)
    ap.add_argument("--quick", action="store_true", help="three sizes only")
    a = ap.parse_args()
    if a.child:
        h, m, lpp, sd = a.child
        print(json.dumps(child(int(h), m, None if lpp == "none" else int(lpp), sd)))
        return 0
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    rows = []
    t0 = time.time()
    for h in (HIDDEN[::2] if a.quick else HIDDEN):
        for m, lpp, sd in MODES:
            r = subprocess.run([sys.executable, __file__, "--child", str(h), m, str(lpp).lower(), sd],
                               env=env, capture_output=True, text=True, check=True)
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    mb = lambda x: x / 2**20  # noqa: E731
    hdr = f"{'mode':<22}{'params':>12}{'fp32 MiB':>10}{'peak MiB':>10}{'ratio':>7}{'est. MiB':>10}{'s':>7}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        mode = r["method"] + (f" lpp={r['layers_per_pass']}" if r["layers_per_pass"] else "") + f" {r['score_dtype']}"
        print(f"{mode:<22}{r['params']:>12,}{mb(r['fp32_bytes']):>10.1f}{mb(r['peak']):>10.1f}"
              f"{r['ratio']:>7.2f}{mb(r['estimate']):>10.1f}{r['seconds']:>7.1f}")
    # linearity: least-squares fit peak = a + k * fp32_bytes per mode; report slope and worst residual
    fits = {}
    for m, lpp, sd in MODES:
        pts = [(r["fp32_bytes"], r["peak"]) for r in rows
               if r["method"] == m and r["layers_per_pass"] == lpp and r["score_dtype"] == sd]
        n = len(pts)
        mx = sum(x for x, _ in pts) / n
        my = sum(y for _, y in pts) / n
        k = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
        a0 = my - k * mx
        ss_res = sum((y - a0 - k * x) ** 2 for x, y in pts)
        ss_tot = sum((y - my) ** 2 for _, y in pts)
        key = m + (f"-lpp{lpp}" if lpp else "") + f"-{sd}"
        fits[key] = {"slope": k, "intercept_mib": mb(a0), "r2": 1 - ss_res / ss_tot, "max_slope": MAX_SLOPE[m],
                     "max_ratio": max(y / x for x, y in pts),
                     "max_ratio_above_10M": max((y / x for x, y in pts if x / 4 >= 10e6), default=None),
                     "lean": (m, lpp, sd) in LEAN}
    print()
    for key, f in fits.items():
        print(f"{key:<20} peak ≈ {f['intercept_mib']:.1f} MiB + {f['slope']:.2f} x fp32 size   "
              f"(R² {f['r2']:.4f}; max ratio {f['max_ratio']:.2f}; ≥10M params {f['max_ratio_above_10M']:.2f})")
    linear = all(f["slope"] <= f["max_slope"] and f["r2"] > 0.99 for f in fits.values())
    big = max(r["params"] for r in rows)
    lean = all(r["ratio"] <= 2.0 for r in rows if r["params"] == big
               and (r["method"], r["layers_per_pass"], r["score_dtype"]) in LEAN)
    lean = lean and all(f["slope"] <= 2.0 for f in fits.values() if f["lean"])
    ok = linear and lean
    print(f"\nall modes linear in size (R² > 0.99, slope within MAX_SLOPE): {'PASS' if linear else 'FAIL'};  lean modes (SNIP layer-by-layer "
          f"+ bf16 scores, Wanda bf16 scores) slope ≤ 2 and peak ≤ 2x fp32 at {big / 1e6:.0f}M parameters: {'PASS' if lean else 'FAIL'}"
          f"   ({time.time() - t0:.0f} s)")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"method": "child-process RSS high-water mark (VmHWM after clear_refs) minus "
                                         "RSS before model creation; MALLOC_MMAP_THRESHOLD_=65536",
                               "calibration": {"batches": 8, "batch_size": 1, "seq_len": 64, "response_tokens": 32},
                               "rows": rows, "fits": fits, "pass": ok}, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
