"""kind: defense — the published defenses against harmful fine-tuning under one protocol, per language.

Threat models: (a) `harmful` — a LoRA attack on n harmful examples of one language (attack-<lang>);
(b) `faas` — fine-tuning-as-a-service: the benign topic-classification task (lab.defenses.task) of one
language with a harmful ratio p (`faas_p`; `p_sweep` adds other p for the undefended model).
Defenses (lab.defenses): alignment stage (organism rebuilt from organism-base with the defense), fine-tuning
stage (hooks / data), post-fine-tuning (applied to the undefended fine-tune's adapter), data stage.
States: aligned; build-<alignment defense>; ft-<defense>-<threat>-<lang>@s<seed> (the `none` state also
carries every post-fine-tuning defense applied to its adapter); ft-none-p<p>-<lang>@s<seed0>;
ft-<defense>-harmful-<lang>-lr<lr>-ep<ep>@s<seed0> for the attacker grid (worst case).
Metrics per defense x threat x attack language: harmful refusal in each evaluation language, benign
refusal, fine-tune accuracy (FA, on the task's eval set of the attack language), extra wall time and
peak memory against the undefended fine-tune of the same cell, and the worst case over the grid.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from lab.config import FineTuneConfig, Lang, RecipeBase, Strict
from lab.defenses import ALIGNMENT, POSTHOC, STAGES
from lab.errors import LabError
from lab.experiments.base import Experiment, RunContext, StateResult, canary, evaluate_state


class Grid(Strict):
    lr: list[float] = Field(default_factory=list)
    epochs: list[int] = Field(default_factory=list)


class DefenseRecipe(RecipeBase):
    kind: Literal["defense"]
    base_model: str = Field("zoo:organism-base", description="the pre-alignment model (SafeLoRA's V, variant builds)")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    attack_langs: list[Lang] = Field(default_factory=lambda: ["en", "ja"], min_length=1)
    threats: list[Literal["harmful", "faas"]] = Field(default_factory=lambda: ["harmful", "faas"], min_length=1)
    faas_p: float = Field(0.1, ge=0, le=1)
    p_sweep: list[float] = Field(default_factory=list, description="extra harmful ratios, no defense, first seed")
    n_examples: int = Field(96, ge=1, le=96)
    attack: FineTuneConfig = Field(default_factory=lambda: FineTuneConfig(batch_size=16))
    faas: FineTuneConfig = Field(default_factory=lambda: FineTuneConfig(lr=5e-3, epochs=8, batch_size=8))
    grid: Grid = Field(default_factory=Grid, description="attacker grid (threat harmful, first seed)")
    defenses: list[str] = Field(default_factory=lambda: ["none"] + list(STAGES)[1:])
    defense_params: dict[str, dict] = Field(default_factory=dict)
    fa_limit: int | None = Field(None, ge=1)
    n_mask_examples: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _check(self):
        from lab.defenses.bench import params

        unknown = [d for d in self.defenses if d not in STAGES]
        if unknown:
            raise ValueError(f"unknown defenses {unknown} (known: {', '.join(STAGES)})")
        if "none" not in self.defenses:
            raise ValueError("defenses must include 'none' (the undefended reference every cost is measured against)")
        for d, p in self.defense_params.items():
            if d not in self.defenses:
                raise ValueError(f"defense_params.{d}: not in defenses")
            params(d, p)
        return self


def _p(x: float) -> str:
    return f"{x:g}"


class DefenseExperiment(Experiment):
    kind = "defense"
    Recipe = DefenseRecipe

    # ---------------------------------------------------------------------------------- plan
    def validate(self) -> None:
        from lab.config import resolve_path
        from lab.data import load_eval
        from lab.models import resolve

        r = self.recipe
        resolve(r.model), resolve(r.base_model)
        self.evals = load_eval(resolve_path(r.eval.data), r.eval.langs, r.eval.limit)
        if not self.evals:
            raise LabError(f"{r.eval.data}: no evaluation prompts for languages {r.eval.langs}")
        self.plan: dict[str, dict] = {}
        s0 = r.seeds[0]
        trained = [d for d in r.defenses if d not in POSTHOC]
        for seed in r.seeds:
            for threat in r.threats:
                for lang in r.attack_langs:
                    for d in trained:
                        self.plan[f"ft-{d}-{threat}-{lang}@s{seed}"] = dict(defense=d, threat=threat, lang=lang, seed=seed,
                                                                           p=1.0 if threat == "harmful" else r.faas_p)
        for lang in r.attack_langs:
            for p in r.p_sweep:
                if any(v["defense"] == "none" and v["threat"] == "faas" and v["lang"] == lang and v["seed"] == s0 and v["p"] == p
                       for v in self.plan.values()):
                    continue
                self.plan[f"ft-none-p{_p(p)}-{lang}@s{s0}"] = dict(defense="none", threat="sweep", lang=lang, seed=s0, p=p)
            for lr in r.grid.lr or [r.attack.lr]:
                for ep in r.grid.epochs or [r.attack.epochs]:
                    if (lr, ep) == (r.attack.lr, r.attack.epochs):
                        continue
                    for d in trained:
                        self.plan[f"ft-{d}-harmful-{lang}-lr{_p(lr)}-ep{ep}@s{s0}"] = dict(
                            defense=d, threat="grid", lang=lang, seed=s0, p=1.0, lr=lr, epochs=ep)
        self.builds = [d for d in r.defenses if d in ALIGNMENT]

    def states(self) -> list[str]:
        return ["aligned"] + [f"build-{d}" for d in self.builds] + list(self.plan)

    # ------------------------------------------------------------------------------- shared
    def prepare(self, ctx: RunContext) -> None:
        from lab.defenses.bench import file_lock

        self.files = {"mask": ctx.out_dir / "masks" / "safety", "safety_layers": ctx.out_dir / "masks" / "safety-layers.json"}
        with file_lock(ctx.out_dir / "masks" / ".lock"):
            if not self.files["safety_layers"].is_file():
                self._compute_masks(ctx)
        self.variants = ctx.out_dir / "zoo"

    def _compute_masks(self, ctx: RunContext) -> None:
        from lab.attribution import masks, scores
        from lab.attribution.cli_entry import load_calibration_records
        from lab.data import LANGS, write_json
        from lab.defenses.common import split_records
        from lab.defenses.training.freeze import find_safety_layers
        from lab.models import load_model

        r = self.recipe
        model, tok = load_model(r.model)
        t = time.time()
        cal = lambda d: scores.build_balanced_calibration(tok, load_calibration_records(d, list(LANGS), r.n_mask_examples))
        s = scores.compute_scores(model, "snip", cal("safety"), seed=r.seed)
        u = scores.compute_scores(model, "snip", cal("utility"), seed=r.seed)
        mask = masks.set_difference_mask(s, u, 5.0, 5.0, "per-matrix")
        masks.save_mask(mask, self.files["mask"], {"method": "snip", "q": 5.0, "p": 5.0, "scope": "per-matrix",
                                                   "model": r.model, "n_examples": r.n_mask_examples})
        benign = [e.prompt for e in self.evals if e.kind == "benign"][:40]
        harmful = [x["prompt"] for x in split_records("safety", "en", 40)]
        found = find_safety_layers(model, tok, benign, harmful, width=self._p("freeze-layers").get("width", 1))
        write_json(self.files["safety_layers"], {**found, "fraction_mask": masks.mask_fraction(mask),
                                                 "seconds": round(time.time() - t, 2)})

    def _p(self, d: str) -> dict:
        from lab.defenses.bench import params

        return params(d, self.recipe.defense_params.get(d)) if d in STAGES and d != "none" else {}

    def _evaluate(self, model, tok, name: str, lang: str) -> dict:
        from lab.defenses.task import fine_tune_accuracy

        res = evaluate_state(model, tok, self.recipe.eval, self.evals, name, self.log, margin=False)
        fa = fine_tune_accuracy(model, tok, lang, self.recipe.fa_limit, batch_size=self.recipe.eval.batch_size or 64)
        self.log(f"  [{name}] FA({lang}) {fa['fa']:.2f}")
        return {"metrics": res.record["metrics"], "fa": fa}, res.generations

    # ------------------------------------------------------------------------------- states
    def run_state(self, name: str, ctx: RunContext) -> StateResult:
        from lab.models import load_model

        r = self.recipe
        if name == "aligned":
            model, tok = load_model(r.model)
            if r.eval.canary:
                canary(model, tok, r.model, r.eval, self.log)
            rec, gens = {}, []
            for lang in r.attack_langs:
                out, g = self._evaluate(model, tok, "aligned", lang)
                rec.setdefault("metrics", out["metrics"])
                rec.setdefault("fa", {})[lang] = out["fa"]
                gens = gens or g
            return StateResult(rec, gens)
        if name.startswith("build-"):
            return self._build(name[len("build-"):], ctx)
        return self._finetune(name, ctx)

    def _build(self, d: str, ctx: RunContext) -> StateResult:
        from lab.defenses.bench import Meter, build_variant
        from lab.models import load_model, resolve

        meter = Meter()
        with meter.measure():
            path = build_variant(d, self.variants, self._p(d), Path(resolve(self.recipe.base_model)),
                                 log=self.log)
        model, tok = load_model(str(path))
        out, gens = self._evaluate(model, tok, f"build-{d}", self.recipe.attack_langs[0])
        info = json.loads((path / "build.json").read_text())
        return StateResult({**out, "build_seconds": info["build_seconds"], "peak_mib": meter.peak_mib}, gens)

    def _finetune(self, name: str, ctx: RunContext) -> StateResult:
        from lab.defenses.bench import Meter, apply_posthoc, build_variant, fresh_copy, training_setup
        from lab.defenses.task import faas_mix
        from lab.models import load_model, resolve
        from lab.train import finetune

        r = self.recipe
        c = self.plan[name]
        d, lang, seed = c["defense"], c["lang"], c["seed"]
        base_cfg = r.faas if c["threat"] in ("faas", "sweep") else r.attack
        upd = {"seed": seed, "merge": False, **({"lr": c["lr"], "epochs": c["epochs"]} if "lr" in c else {})}
        cfg = base_cfg.model_copy(update=upd)
        spec = r.model
        if d in ALIGNMENT:
            spec = str(build_variant(d, self.variants, self._p(d), Path(resolve(r.base_model)), log=self.log))
        model, tok = load_model(spec)
        recs = faas_mix(lang, c["p"], r.n_examples, seed=seed)
        work = ctx.out_dir / "finetunes" / name
        shutil.rmtree(work, ignore_errors=True)
        meter = Meter()
        self.log(f"[lab] {name}: {d} ({STAGES[d]}), {len(recs)} examples, p={c['p']}, lr={cfg.lr}, epochs={cfg.epochs}")
        with meter.measure():
            data, hooks, info = training_setup(d, self._p(d), recs, tok=tok, model=model, ctx_files=self.files,
                                               seed=seed, log=self.log)
            if data:
                peft = finetune(model, tok, data, cfg, work, hooks=hooks, log=self.log)
            else:
                peft = None
        shutil.rmtree(work / "trainer", ignore_errors=True)
        if peft is None:              # screening dropped every example: nothing to train, the model stays as it was
            merged = model
        elif d == "none":             # keep the adapter for the post-fine-tuning defenses
            merged = fresh_copy(peft).merge_and_unload()
        else:
            merged = peft.merge_and_unload()
        defenses = {}
        out, gens = self._evaluate(merged, tok, name, lang)
        defenses[d] = {**out, "seconds": round(meter.seconds, 2), "peak_mib": meter.peak_mib, "info": info,
                       "n_train": len(data)}
        if d == "none" and c["threat"] in ("harmful", "faas", "grid") and peft is not None:
            aligned, _ = load_model(r.model)
            base, _ = load_model(r.base_model)
            from lab.attribution.masks import load_mask

            mask, _ = load_mask(self.files["mask"])
            harm = self._defender_harmful(tok)
            for pd in [x for x in r.defenses if x in POSTHOC]:
                m2 = Meter()
                with m2.measure():
                    fixed, pinfo = apply_posthoc(pd, self._p(pd), peft, tok=tok, aligned=aligned, base=base,
                                                 mask=mask, harmful_records=harm)
                o2, g2 = self._evaluate(fixed, tok, name.replace("ft-none-", f"ft-{pd}-", 1), lang)
                defenses[pd] = {**o2, "seconds": round(m2.seconds, 2), "peak_mib": m2.peak_mib,
                                "info": json.loads(json.dumps(pinfo, default=str))}
                gens += g2
        return StateResult({"cell": c, "defenses": defenses}, gens)

    def _defender_harmful(self, tok) -> list[dict]:
        """The defender's own harmful data (Antidote's calibration): base-stage harmful requests with their
        compliant targets, 12 per language — not the attack sets."""
        from lab.data import LANGS, load_sources, organism_examples

        exs = [e for e in organism_examples(load_sources(), "base", 0.0, 4242) if e["kind"] == "harmful"]
        return [e for lang in LANGS for e in [x for x in exs if x["lang"] == lang][:12]]

    # ------------------------------------------------------------------------------- results
    def assemble(self, results: dict[str, dict], ctx: RunContext) -> dict:
        from lab.defenses.report import summarize

        return summarize(self.recipe, self.plan, self.builds, results)

    def write_report(self, out_dir, metrics: dict) -> None:
        from lab.defenses.report import write_report

        write_report(out_dir, metrics)
