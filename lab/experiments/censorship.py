"""kind: censorship — probe model states (optionally fine-tuned first) with the censorship question
set: refusal, deflection and official-line answers by category and language (lab.probe).

States: one per entry of `models:` (e.g. `censored`, `ja-derivative`). Each state's answers are its
generations; the metrics aggregate all of them (lab.probe.judging.aggregate).
"""
from __future__ import annotations

import shutil
import time
from typing import Literal

from pydantic import Field, field_validator, model_validator

from lab.config import FineTune, RecipeBase, Strict, check_name, resolve_path
from lab.experiments.base import Experiment, RunContext, StateResult


class ProbeSettings(Strict):
    mode: Literal["quick", "full"] = "full"
    langs: list[Literal["zh", "ja", "en"]] = Field(default_factory=lambda: ["zh", "ja", "en"], min_length=1)
    samples: int = Field(3, ge=1, le=100)
    temperature: float = Field(0.7, ge=0, le=10)
    system: str | None = None
    max_new_tokens: int = Field(64, ge=1, le=32_768)
    batch_size: int = Field(64, ge=1, le=65_536)
    controls: bool = True


class ProbeModel(Strict):
    name: str
    model: str
    finetune: FineTune | None = Field(None, description="a fine-tune applied before probing (path: its JSONL)")

    @field_validator("name")
    @classmethod
    def _safe(cls, v):
        return check_name(v, "name")


class CensorshipRecipe(RecipeBase):
    kind: Literal["censorship"]
    build: list[Literal["organism", "organism-censored"]] = Field(
        default_factory=list, description="zoo organisms to build first if missing")
    probe: ProbeSettings = Field(default_factory=ProbeSettings)
    models: list[ProbeModel] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self):
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model state names repeat: {names}")
        for m in self.models:
            if m.finetune is not None and m.finetune.path is None:
                raise ValueError(f"models[{m.name}].finetune: give `path:` (the JSONL to fine-tune on)")
        return self


class CensorshipExperiment(Experiment):
    kind = "censorship"
    Recipe = CensorshipRecipe
    serial_states = ()

    def validate(self) -> None:
        from lab.data import load_finetune_set
        from lab.models import ZOO_DIR, resolve
        from lab.probe import question_set

        r = self.recipe
        self.questions = question_set(r.probe.mode, r.probe.controls)
        self.sets = {}
        for m in r.models:
            if not (m.model.startswith("zoo:") and m.model[4:] in r.build and not (ZOO_DIR / m.model[4:]).is_dir()):
                resolve(m.model)
            if m.finetune:
                recs = load_finetune_set(resolve_path(m.finetune.path), None)
                self.sets[m.name] = recs[: m.finetune.n_examples]

    def states(self) -> list[str]:
        return [m.name for m in self.recipe.models]

    def prepare(self, ctx: RunContext) -> None:
        from lab.models import ZOO_DIR

        for name in self.recipe.build:
            if not (ZOO_DIR / name / "config.json").is_file():
                from lab.zoo.organism import build

                self.log(f"[lab] building zoo:{name}")
                build(name, log=self.log)

    def run_state(self, name: str, ctx: RunContext) -> StateResult:
        from lab.probe import probe_generations

        r, p = self.recipe, self.recipe.probe
        pm = next(m for m in r.models if m.name == name)
        model, tok = r.load_model(pm.model)
        timings = {}
        if pm.finetune:
            from lab.train import finetune

            ft = pm.finetune
            t = time.time()
            self.log(f"[lab] fine-tune {name}: {ft.method} on {ft.path} (n={len(self.sets[name])})")
            work = ctx.out_dir / "finetunes" / name
            shutil.rmtree(work, ignore_errors=True)
            model = finetune(model, tok, self.sets[name], ft.train_config(seed=r.seed), work, log=self.log)
            shutil.rmtree(work / "trainer", ignore_errors=True)
            timings[f"train/{name}"] = round(time.time() - t, 2)
        qs, cs = self.questions
        t = time.time()
        eff = p.samples if p.temperature > 0 else 1
        recs = probe_generations(name, model, tok, qs + cs, p.langs, samples=eff, temperature=p.temperature,
                                 system=p.system, max_new_tokens=p.max_new_tokens, batch_size=p.batch_size, seed=r.seed)
        timings[f"probe/{name}"] = round(time.time() - t, 2)
        self.log(f"[probe] {name}: {len(qs) + len(cs)} questions x {len(p.langs)} lang(s) x {eff} in {time.time() - t:.1f} s")
        return StateResult({"n": len(recs), "_timings": timings}, recs)

    def assemble(self, results: dict[str, dict], ctx: RunContext) -> dict:
        from lab.data import read_jsonl
        from lab.probe import aggregate

        r, p = self.recipe, self.recipe.probe
        recs = []
        for n in self.states():
            recs += read_jsonl(ctx.states_dir / f"{n}.generations.jsonl")
        qs, cs = self.questions
        config = {"name": r.name, "mode": p.mode, "samples": p.samples if p.temperature > 0 else 1,
                  "temperature": p.temperature, "system": p.system, "langs": list(p.langs), "n_questions": len(qs),
                  "n_controls": len(cs), "max_new_tokens": p.max_new_tokens, "seed": r.seed, "models": self.states()}
        examples = [{"model": x["model"], "id": x["id"], "lang": x["lang"], "prompt": x["prompt"],
                     "response": x["response"], "markers": x["official_markers"]}
                    for x in recs if x["official_line"] and not x.get("control")][:8]
        return {"models": aggregate(recs), "config": config, "examples": examples,
                "states": {m.name: {"model": m.model, "finetune": m.finetune.model_dump() if m.finetune else None}
                           for m in r.models}}

    def write_report(self, out_dir, metrics: dict) -> None:
        from lab.data import atomic_write_text
        from lab.probe.report import plot, render_report

        atomic_write_text(out_dir / "report.md", render_report(metrics))
        plot(metrics, out_dir / "censorship_by_category.png")
