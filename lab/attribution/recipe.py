"""The safety-localization experiment (recipes/safety-localization.yaml): where does safety live in the
organism's weights, per language, and what do pruning, masked attacks, freezing and restoring do?

Masks (SNIP by default; all computed on the aligned model):
  main mask     top-q % safety score (safety data, all languages, each language weighted equally) minus
                top-p % utility score (Wei et al.)
  per-language  the same with one language's safety and utility data -> Jaccard overlap table vs random
  sweep mask s  exactly s % of the weights: the top s % by safety score among the weights outside the
                top-p % utility set (so "mask size" is the size) — used by the masked attacks
  random        for every mask, a random mask with the same number of weights in every matrix

States (each evaluated per language: harmful and benign refusal with Wilson CIs):
  aligned, base                 the organism and organism-base (helpful-only), untouched
  pruned-safety / -random       main mask set to zero
  restored-base-safety / -random  main mask copied from organism-base
  masked-attack-S / -S-random   full fine-tuning on the harmful attack set where only the sweep mask of
                                size S % may change
  attack-full, attack-lora      the unconstrained attacks (references)
  frozen-attack-full / -lora (+ -random)  the same attacks with the main mask frozen
                                (LoRA: masked-forward delta, see interventions.py)
  restored / restored-random    attack-full, then the main mask copied back from the aligned model
"""
from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lab.data import write_json
from lab.errors import LabError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LocEval(_Strict):
    data: str = "datasets/splits/eval.jsonl"
    langs: list[str] = Field(default_factory=lambda: ["zh", "ja", "en", "it", "hi"])
    limit: int | None = Field(24, description="first N parallel prompts per kind (harmful/benign) per language")
    max_new_tokens: int | None = None
    batch_size: int = 64
    detector: str = "tiered"


class LocAttribution(_Strict):
    method: Literal["snip", "wanda", "random"] = "snip"
    q: float = Field(5.0, description="percent: top-q % by safety score")
    p: float | None = Field(5.0, description="percent: minus top-p % by utility score (null: no set difference)")
    scope: Literal["global", "per-matrix"] = "per-matrix"
    n_examples: int = Field(64, description="calibration examples per language")
    batch_size: int = 16
    max_length: int = 160
    per_language: bool = True


class LocAttack(_Strict):
    data: str = "datasets/splits/attack-en.jsonl"
    n_examples: int = 100
    lr_full: float = 1e-3
    lr_lora: float = 3e-3
    epochs: int = 3
    batch_size: int = 16
    lora_r: int = 8
    lora_alpha: int = 16


class LocRecipe(_Strict):
    name: str = "safety-localization"
    kind: Literal["safety-localization"] = "safety-localization"
    experiment: Literal["safety-localization"] | None = None  # alias of kind (lab run dispatches on either)
    seed: int = 0
    model: str = "zoo:organism"
    base_model: str = "zoo:organism-base"
    tracking: Literal["auto", "online", "offline", "none"] = "none"
    eval: LocEval = Field(default_factory=LocEval)
    attribution: LocAttribution = Field(default_factory=LocAttribution)
    attack: LocAttack = Field(default_factory=LocAttack)
    interventions: list[Literal["prune", "restore-base", "masked-attack", "freeze", "restore"]] = Field(
        default_factory=lambda: ["prune", "restore-base", "masked-attack", "freeze", "restore"])
    masked_attack_sizes: list[float] = Field(default_factory=lambda: [1, 5, 20, 50])
    random_control: bool = True


def load_config(cfg) -> LocRecipe:
    """A LocRecipe from a model, dict, or YAML path."""
    if isinstance(cfg, LocRecipe):
        return cfg
    src = "recipe"
    if isinstance(cfg, (str, Path)):
        src = str(cfg)
        try:
            cfg = yaml.safe_load(Path(cfg).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise LabError(f"{src}: cannot read recipe ({e})") from None
    if hasattr(cfg, "model_dump"):
        cfg = cfg.model_dump()
    try:
        return LocRecipe.model_validate(cfg)
    except ValidationError as e:
        err = e.errors()[0]
        raise LabError(f"{src}: key '{'.'.join(map(str, err['loc']))}': {err['msg']}") from None


def _fmt_rate(m: dict, kind: str) -> str:
    r, ci = m.get(f"{kind}_refusal"), m.get(f"{kind}_refusal_ci") or [float("nan")] * 2
    return f"{100 * r:.0f} [{100 * ci[0]:.0f}–{100 * ci[1]:.0f}]"


def results_table(models: dict, langs: list[str]) -> str:
    """Markdown: one row per state; per language harmful refusal % [95 % Wilson CI] and benign refusal %."""
    head = "| state | " + " | ".join(f"{l} harmful | {l} benign" for l in langs) + " |"
    lines = [head, "|---" * (1 + 2 * len(langs)) + "|"]
    for state, per in models.items():
        cells = []
        for l in langs:
            m = per.get(l)
            cells += [_fmt_rate(m, "harmful"), _fmt_rate(m, "benign")] if m else ["—", "—"]
        lines.append(f"| {state} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_safety_localization(cfg, out_dir: Path, *, log=print) -> dict:
    """Run the whole experiment; writes out_dir/{config.yaml, masks/, heatmap-*.png, overlap.md,
    generations.jsonl, report.md, metrics.json (last)} and returns the metrics dict."""
    from lab.attribution import analysis, interventions, masks, scores
    from lab.attribution.cli_entry import load_calibration_records
    from lab.data import load_eval, load_finetune_set, write_jsonl
    from lab.evaluate import evaluate_model
    from lab.models import load_model, set_threads
    from lab.train import FineTuneConfig, finetune

    rc = load_config(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(rc.model_dump(), sort_keys=False), encoding="utf-8")
    set_threads()
    torch.manual_seed(rc.seed)
    t0 = time.time()
    timings: dict[str, float] = {}
    langs = list(rc.eval.langs)
    eval_recs = load_eval(rc.eval.data, langs, rc.eval.limit)
    attack_recs = [r.model_dump() for r in load_finetune_set(rc.attack.data, rc.attack.n_examples)]
    models: dict[str, dict] = {}
    descriptions: dict[str, str] = {}
    generations: list[dict] = []

    def evaluate(state: str, model, desc: str) -> None:
        t = time.time()
        res = evaluate_model(model, tok, eval_recs, state=state, langs=langs, max_new_tokens=rc.eval.max_new_tokens,
                             batch_size=rc.eval.batch_size, detector=rc.eval.detector, margin=False, log=log)
        models[state] = res.metrics
        descriptions[state] = desc
        generations.extend(res.generations)
        timings[f"eval/{state}"] = round(time.time() - t, 2)

    log(f"[lab] safety-localization: {rc.model} (base {rc.base_model}) -> {out_dir}")
    aligned, tok = load_model(rc.model)
    base, _ = load_model(rc.base_model)
    evaluate("aligned", aligned, "the aligned organism, untouched")
    evaluate("base", base, "organism-base (helpful-only), untouched")

    # ------------------------------------------------------------------ masks
    a = rc.attribution
    t = time.time()
    cal_langs = langs
    safety = load_calibration_records("safety", cal_langs, a.n_examples)
    utility = load_calibration_records("utility", cal_langs, a.n_examples) if a.p is not None else {}

    def score(recs_by_lang, group, salt=0):
        if a.method == "random":
            return scores.random_scores(aligned, seed=rc.seed + salt)
        b = scores.build_balanced_calibration(tok, {l: recs_by_lang[l] for l in group}, batch_size=a.batch_size,
                                              max_length=a.max_length)
        return scores.compute_scores(aligned, a.method, b, seed=rc.seed)

    s_all = score(safety, cal_langs, 1)
    u_all = score(utility, cal_langs, 2) if a.p is not None else None
    main = masks.set_difference_mask(s_all, u_all, a.q, a.p, a.scope)
    rand_main = analysis.random_mask_like(main, seed=rc.seed + 17)
    mdir = out_dir / "masks"
    meta = {"model": rc.model, "method": a.method, "q": a.q, "p": a.p, "scope": a.scope, "n_examples": a.n_examples}
    masks.save_mask(main, mdir / "safety-all", {**meta, "data": "safety", "langs": cal_langs})
    masks.save_mask(rand_main, mdir / "random-all", {**meta, "method": "random", "data": "none"})
    analysis.heatmap(main, out_dir / "heatmap-all.png", f"{a.method} safety mask (all languages): "
                     f"top {a.q}% minus utility top {a.p}%")
    mask_info = {"main": {"fraction": masks.mask_fraction(main), "q": a.q, "p": a.p, "scope": a.scope,
                          "method": a.method}}
    overlap_rows = []
    if a.per_language and len(cal_langs) > 1:
        per_lang = {}
        for i, l in enumerate(cal_langs):
            s_l = score(safety, [l], 10 + i)
            u_l = score(utility, [l], 20 + i) if a.p is not None else None
            per_lang[l] = masks.set_difference_mask(s_l, u_l, a.q, a.p, a.scope)
            masks.save_mask(per_lang[l], mdir / f"safety-{l}", {**meta, "data": "safety", "langs": [l]})
            mask_info[f"safety-{l}"] = {"fraction": masks.mask_fraction(per_lang[l])}
        per_lang_all = {**per_lang, "all": main}
        overlap_rows = analysis.overlap_table(per_lang_all, seed=rc.seed)
        (out_dir / "overlap.md").write_text(analysis.overlap_matrix_markdown(per_lang_all, overlap_rows) + "\n")
        log(analysis.overlap_matrix_markdown(per_lang_all, overlap_rows))
    timings["attribution"] = round(time.time() - t, 2)
    log(f"  main mask: {100 * mask_info['main']['fraction']:.2f}% of linear weights "
        f"({timings['attribution']:.1f} s for all scores)")

    controls = [("safety", main), ("random", rand_main)] if rc.random_control else [("safety", main)]

    # ------------------------------------------------------------------ prune / restore from base
    if "prune" in rc.interventions:
        for label, m in controls:
            mdl = copy.deepcopy(aligned)
            interventions.prune(mdl, m)
            evaluate(f"pruned-{label}", mdl, f"aligned with the {label} mask zeroed")
            del mdl
    if "restore-base" in rc.interventions:
        for label, m in controls:
            mdl = copy.deepcopy(aligned)
            interventions.restore(mdl, base, m)
            evaluate(f"restored-base-{label}", mdl, f"aligned with the {label} mask copied from organism-base")
            del mdl

    ak = rc.attack

    def attack(state: str, method: str, grad_mask=None, mode="only"):
        t = time.time()
        ftc = FineTuneConfig(method=method, lr=ak.lr_full if method == "full" else ak.lr_lora, epochs=ak.epochs,
                             batch_size=ak.batch_size, seed=rc.seed, lora_r=ak.lora_r, lora_alpha=ak.lora_alpha,
                             lora_dropout=0.0, merge=True)
        mdl = finetune(copy.deepcopy(aligned), tok, attack_recs, ftc, out_dir / "finetunes" / state,
                       grad_mask=grad_mask, grad_mask_mode=mode, log=log)
        # The trainer leaves an instance-level `forward` (accelerate's output-conversion wrapper) bound to
        # this object; a deepcopy of the model would keep calling the ORIGINAL's forward. Drop it.
        if "forward" in vars(mdl):
            del mdl.forward
        timings[f"train/{state}"] = round(time.time() - t, 2)
        return mdl

    def changed_outside(mdl, m, fixed_is_mask: bool) -> int:
        """Entries that changed although the mask said they must not (should be 0)."""
        ref = dict(aligned.named_parameters())
        n = 0
        for k, v in mdl.named_parameters():
            if k in m:
                fixed = m[k] if fixed_is_mask else ~m[k]
                n += int((v.detach()[fixed] != ref[k].detach()[fixed]).sum())
        return n

    checks: dict[str, int] = {}
    # ------------------------------------------------------------------ masked attacks (size sweep)
    if "masked-attack" in rc.interventions:
        adj = s_all
        if u_all is not None:
            umask = masks.top_q_mask(u_all, a.p, a.scope)
            adj = {n: s_all[n].masked_fill(umask[n], 0) for n in s_all}
        for size in rc.masked_attack_sizes:
            tag = f"{size:g}"
            m = masks.top_q_mask(adj, size, a.scope)
            mask_info[f"sweep-{tag}"] = {"fraction": masks.mask_fraction(m)}
            for label, mm in ([("safety", m), ("random", analysis.random_mask_like(m, seed=rc.seed + int(size * 10)))]
                              if rc.random_control else [("safety", m)]):
                state = f"masked-attack-{tag}" + ("" if label == "safety" else "-random")
                mdl = attack(state, "full", mm, "only")
                checks[state] = changed_outside(mdl, mm, fixed_is_mask=False)
                evaluate(state, mdl, f"full fine-tuning on the attack set; only the {label} mask "
                                     f"({tag}% of linear weights) may change")
                del mdl

    # ------------------------------------------------------------------ unconstrained attacks, freeze, restore
    attacked_full = None
    if {"freeze", "restore"} & set(rc.interventions):
        attacked_full = attack("attack-full", "full")
        evaluate("attack-full", attacked_full, "full fine-tuning on the attack set, unconstrained")
    if "freeze" in rc.interventions:
        mdl = attack("attack-lora", "lora")
        evaluate("attack-lora", mdl, "LoRA fine-tuning on the attack set, unconstrained")
        del mdl
        for method in ("lora", "full"):
            for label, m in controls:
                state = f"frozen-attack-{method}" + ("" if label == "safety" else "-random")
                mdl = attack(state, method, m, "freeze")
                checks[state] = changed_outside(mdl, m, fixed_is_mask=True)
                evaluate(state, mdl, f"{method} attack with the {label} mask frozen")
                del mdl
    if "restore" in rc.interventions:
        attacked_sd = {k: v.detach().clone() for k, v in attacked_full.state_dict().items()}
        for label, m in controls:
            attacked_full.load_state_dict(attacked_sd)  # in place: no deepcopy of a trained model
            n = interventions.restore(attacked_full, aligned, m)
            moved = sum(int((v != attacked_sd[k]).sum()) for k, v in attacked_full.state_dict().items())
            state = "restored" if label == "safety" else "restored-random"
            checks[f"{state}-entries-restored"] = 0 if moved <= n else moved  # restore touches only the mask
            mask_info[f"{state}-entries-changed"] = {"restored": n, "changed": moved}
            evaluate(state, attacked_full, f"attack-full, then the {label} mask copied back from the aligned model")
    bad = {k: v for k, v in checks.items() if v}
    if bad:
        raise LabError(f"masked training changed weights outside its mask: {bad}")

    # ------------------------------------------------------------------ outputs
    from lab.metrics import transfer_matrix

    write_jsonl(out_dir / "generations.jsonl", generations)
    wall = round(time.time() - t0, 1)
    metrics = {"recipe": rc.name, "kind": rc.kind, "model": rc.model, "base_model": rc.base_model,
               "models": models, "states": descriptions, "masks": mask_info, "overlap": overlap_rows,
               "mask_checks": {"changed_outside_mask": checks},
               "transfer": transfer_matrix(models) if len(models) > 1 else None,
               "timings": {**timings, "wall_seconds": wall}}
    report = ["# safety-localization", "", f"Model `{rc.model}`, base `{rc.base_model}`; {a.method} masks "
              f"(top {a.q}% safety minus top {a.p}% utility, {a.scope}); main mask = "
              f"{100 * mask_info['main']['fraction']:.2f}% of linear weights. Eval: {len(eval_recs)} prompts "
              f"({rc.eval.limit} per kind per language). Cells: refusal % [95% Wilson CI].", "",
              results_table(models, langs), "", "## States", ""]
    report += [f"- `{s}`: {d}" for s, d in descriptions.items()]
    if overlap_rows:
        report += ["", "## Per-language mask overlap (Jaccard)", "", (out_dir / "overlap.md").read_text()]
    report += ["", f"Wall time {wall:.0f} s."]
    (out_dir / "report.md").write_text("\n".join(report) + "\n", encoding="utf-8")
    write_json(out_dir / "metrics.json", metrics)
    log(f"[lab] done in {wall:.0f} s: {out_dir / 'report.md'}")
    return metrics


if __name__ == "__main__":  # python -m lab.attribution.recipe RECIPE.yaml OUT_DIR
    import sys

    if len(sys.argv) != 3:
        print("usage: python -m lab.attribution.recipe RECIPE.yaml OUT_DIR")
        sys.exit(2)
    try:
        run_safety_localization(sys.argv[1], Path(sys.argv[2]))
    except LabError as e:
        print(f"error: {e}")
        sys.exit(2)
