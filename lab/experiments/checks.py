"""Pre-run checks every recipe kind shares: the model loads, the prompts fit its context, and the starting
model refuses the canary prompts before an attack (a wrong chat template would make every attack succeed)."""
from __future__ import annotations

import json
from pathlib import Path

from lab.config import EvalConfig, RecipeBase, resolve_path
from lab.data import read_jsonl
from lab.errors import LabError


def check_model_and_prompts(spec: str, prompts: list[str], max_new_tokens: int | None, *,
                            trust_remote_code: bool = False) -> None:
    """The model is reachable and every rendered prompt + new tokens fits its context (before any write)."""
    from lab.generate import render_prompts
    from lab.models import load_tokenizer, resolve

    resolve(spec)
    tok = load_tokenizer(spec, trust_remote_code=trust_remote_code)
    ctx = context_length(spec)
    if ctx is None or not prompts:
        return
    longest = max(prompts, key=len)
    if len(longest) > 64 * ctx:  # a cheap bound before tokenizing a huge prompt
        raise LabError(f"a prompt of {len(longest):,} characters cannot fit model '{spec}' (context {ctx} tokens)")
    n = max(len(tok(r, add_special_tokens=False)["input_ids"]) for r in render_prompts(tok, sorted(prompts, key=len)[-8:]))
    need = n + (max_new_tokens or 0)
    if need > ctx:
        raise LabError(f"the longest prompt is {n} tokens; with max_new_tokens={max_new_tokens} it needs {need} "
                       f"> model '{spec}' context of {ctx} tokens (shorten the prompt or lower eval.max_new_tokens)")


def check_loading(recipe: RecipeBase) -> None:
    """Loading options that cannot work here (e.g. 4-bit on a CPU) fail before anything is written."""
    if recipe.quantization is not None:
        from lab.models import device, quantization_config

        quantization_config(recipe.quantization.model_dump(), device())


def context_length(spec: str) -> int | None:
    from lab.models import resolve

    path = Path(resolve(spec))
    cfg = path / "config.json"
    if not cfg.is_file():
        return None
    c = json.loads(cfg.read_text(encoding="utf-8"))
    c = c.get("text_config", c)
    return c.get("max_position_embeddings")


def canary(model, tok, spec: str, ev: EvalConfig, log) -> dict:
    """Before an attack: the starting model must refuse the canary prompts in every evaluated language.

    A wrong chat template silently yields 0 % refusal, which would make every attack look like a success.
    """
    from lab.detect import detect_batch
    from lab.generate import generate

    recs = {lang: read_jsonl(resolve_path(f"datasets/splits/canary-{lang}.jsonl")) for lang in ev.langs}
    flat = [(lang, r["prompt"]) for lang in ev.langs for r in recs[lang]]
    # one batch for every language (greedy rows do not depend on their batch: the same answers as per language)
    gens = generate(model, tok, [p for _, p in flat], max_new_tokens=48, batch_size=64)
    v = detect_batch([g.response for g in gens], [p for _, p in flat], [lang for lang, _ in flat])
    rates = {lang: sum(x.refusal for (l, _), x in zip(flat, v) if l == lang) / len(recs[lang]) for lang in ev.langs}
    bad = {l: r for l, r in rates.items() if r < ev.canary_min}
    if bad:
        ok = [l for l in ev.langs if l not in bad]
        raise LabError(
            f"model '{spec}' refuses too few canary harmful prompts before the attack in "
            f"{', '.join(f'{l} ({r:.0%})' for l, r in bad.items())} (need >= {ev.canary_min:.0%}). Check the chat "
            f"template / model; restrict the languages with --set eval.langs=[{','.join(ok)}] (or `--langs` for lab eval) "
            "if the model does not speak them, or set eval.canary=false to attack an unaligned model on purpose.")
    log(f"  canary refusal before attack: {', '.join(f'{l} {r:.0%}' for l, r in rates.items())}")
    return rates
