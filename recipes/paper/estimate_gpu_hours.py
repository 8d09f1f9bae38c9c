"""GPU-hours estimate for recipes/paper/*.yaml (an estimate, not a measurement).

Token counts: the recipe's real data, tokenized with the real Llama-3.1 / Qwen2.5 tokenizers in
../shared/fixtures/tokenizers (Qwen2 and Qwen2.5 share the vocabulary) and the official chat templates.
Work: training 6*N FLOPs per token (an upper bound for LoRA: frozen weights need no weight gradients),
generation 2*N per token position (prompt + max_new_tokens, an upper bound: answers that stop early
cost less). Throughput: SmolLM2-135M measured on this CPU (1 thread) converted to FLOP/s, which gives
the recipe's time at this machine's speed; the GPU figure divides the same FLOPs by an H100's bf16
peak times an assumed utilization (train 25 %, generation 5 %: HF generate's decode is memory-bound).
    python recipes/paper/estimate_gpu_hours.py
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "fixtures" / "tokenizers"

# measured here (recipes/real/smollm2-attack.yaml, run 1: lr 0.003, max_new_tokens 48, margin on)
SMOL_N = 134.5e6
CPU_TRAIN_TOK_S = 11746 / 178.9  # attack-en: 2 epochs x 64 examples, 178.9 s (incl. trainer set-up)
CPU_GEN_TOK_S = (4571 + 64 * 48) / 133.7  # 64 prompts: prompt tokens + decode positions, 133.7 s (incl. judging)
H100_BF16 = 989e12
UTIL = {"train": 0.25, "gen": 0.05}

MODELS = {"llama-3.1-8b": (8.03e9, "llama-3.1-instruct"), "qwen2-7b": (7.62e9, "qwen2.5-instruct")}


def main():
    from transformers import AutoTokenizer

    from lab.experiments import load_recipe
    from lab.public_data import load_eval_source

    cpu_flops = {"train": 6 * SMOL_N * CPU_TRAIN_TOK_S, "gen": 2 * SMOL_N * CPU_GEN_TOK_S}
    print(f"measured on this CPU (SmolLM2-135M, 1 thread): train {CPU_TRAIN_TOK_S:.0f} tok/s = "
          f"{cpu_flops['train'] / 1e9:.0f} GFLOP/s, generation {CPU_GEN_TOK_S:.0f} tok/s = {cpu_flops['gen'] / 1e9:.0f} GFLOP/s")
    for name, (n_params, tok_dir) in MODELS.items():
        r = load_recipe(ROOT / "recipes" / "paper" / f"{name}.yaml")
        tok = AutoTokenizer.from_pretrained(SHARED / tok_dir)
        render = lambda msgs, gen: tok(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen),
                                       add_special_tokens=False)["input_ids"]
        train_tokens = 0
        for _, ft in r.plan():
            recs = ft.load_records()
            per_epoch = sum(len(render([{"role": "user", "content": x.prompt}, {"role": "assistant", "content": x.response}], False)) for x in recs)
            train_tokens += per_epoch * ft.epochs
        evals = load_eval_source(r.eval.data, r.eval.langs, r.eval.limit)
        prompt_tokens = sum(len(render([{"role": "user", "content": e.prompt}], True)) for e in evals)
        states = 1 + len(r.plan())
        gen_tokens = states * (prompt_tokens + len(evals) * r.eval.max_new_tokens)
        flops = {"train": 6 * n_params * train_tokens, "gen": 2 * n_params * gen_tokens}
        cpu_days = sum(flops[k] / cpu_flops[k] for k in flops) / 86400
        gpu_h = {k: flops[k] / (H100_BF16 * UTIL[k]) / 3600 for k in flops}
        print(json.dumps({"recipe": name, "fine_tunes": len(r.plan()), "states": states, "train_tokens": train_tokens,
                          "eval_prompts": len(evals), "eval_token_positions": gen_tokens,
                          "flops_train": f"{flops['train']:.2e}", "flops_gen": f"{flops['gen']:.2e}",
                          "this_cpu_days": round(cpu_days, 1), "h100_hours_train": round(gpu_h["train"], 2),
                          "h100_hours_gen": round(gpu_h["gen"], 2), "h100_hours_total": round(sum(gpu_h.values()), 2)}))


if __name__ == "__main__":
    main()
