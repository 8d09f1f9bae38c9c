"""kind: transfer — evaluate the starting model, fine-tune it (harmful attack or benign control) in one
language per fine-tune, evaluate every fine-tuned state in every language: the transfer matrix.

States: `aligned`, then one per fine-tune (x seed: `<state>@s<seed>` when `seeds:` is given).
"""
from __future__ import annotations

import shutil
import time
from typing import Literal

from pydantic import Field, model_validator

from lab.config import FineTune, RecipeBase, check_name
from lab.errors import LabError
from lab.experiments.base import (Experiment, RunContext, StateResult, canary, check_loading, check_model_and_prompts,
                                  evaluate_state)


class TransferRecipe(RecipeBase):
    kind: Literal["transfer"]
    baseline: str = Field("aligned", description="state name of the starting model (lab eval: the model's name)")
    seeds: list[int] | None = Field(None, min_length=1, description="repeat every fine-tune for each seed (states get @s<seed>)")
    attack: FineTune | None = Field(None, description="a single fine-tune (sweeps address attack.lang, attack.lr, ...)")
    finetunes: list[FineTune] = Field(default_factory=list)
    defaults: dict = Field(default_factory=dict, description="values applied to every fine-tune unless it sets them")

    @model_validator(mode="after")
    def _names_unique(self):
        names = [f.state for f in self.all_finetunes()]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"fine-tune names must be unique, repeated: {sorted(dup)}")
        check_name(self.baseline, "baseline")
        if self.baseline in names:
            raise ValueError(f"a fine-tune may not be named '{self.baseline}' (the starting model's state)")
        if self.seeds and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds repeat: {self.seeds}")
        return self

    def all_finetunes(self) -> list[FineTune]:
        return ([self.attack] if self.attack else []) + list(self.finetunes)

    def plan(self) -> list[tuple[str, FineTune]]:
        """(state name, fine-tune with its seed) for every fine-tune x seed."""
        out = []
        for seed in self.seeds or [self.seed]:
            for ft in self.all_finetunes():
                out.append((ft.state if not self.seeds else f"{ft.state}@s{seed}", ft.model_copy(update={"seed": seed})))
        return out


class TransferExperiment(Experiment):
    kind = "transfer"
    Recipe = TransferRecipe

    serial_states = ()  # the fine-tunes do not need the starting model's evaluation: every state is independent

    def validate(self) -> None:
        from lab.public_data import load_eval_source

        r = self.recipe
        self.evals = load_eval_source(r.eval.data, r.eval.langs, r.eval.limit)
        if not self.evals:
            raise LabError(f"{r.eval.data}: no evaluation prompts for languages {r.eval.langs}")
        self.sets = {n: ft.load_records() for n, ft in r.plan()}
        for n, ft in r.plan():
            if len(self.sets[n]) < ft.n_examples:
                raise LabError(f"fine-tune {n}: n_examples={ft.n_examples} but {ft.dataset_path} has only "
                               f"{len(self.sets[n])} examples")
        check_loading(r)
        check_model_and_prompts(r.model, [e.prompt for e in self.evals], r.eval.max_new_tokens,
                                trust_remote_code=r.trust_remote_code)
        self.plan = dict(r.plan())

    def states(self) -> list[str]:
        return [self.recipe.baseline] + list(self.plan)

    def _load(self):
        return self.recipe.load_model()

    def prepare(self, ctx: RunContext) -> None:
        """The canary, once, in the main process, before any state (a worker skips it)."""
        r = self.recipe
        attacks_left = [n for n in self.plan if not ctx.done(n)]
        if attacks_left and r.eval.canary and not ctx.worker:
            model, tok = self._load()
            canary(model, tok, r.model, r.eval, self.log)

    def cost(self, name: str) -> float:
        """Longest first: harmful fine-tunes (long compliant answers to evaluate), then benign ones, then the
        starting model's evaluation (often a cache hit)."""
        ft = self.plan.get(name)
        return 0.0 if ft is None else ft.n_examples * ft.epochs * (2.0 if ft.data == "harmful" else 1.0)

    def run_state(self, name: str, ctx: RunContext, split=None) -> StateResult:
        r = self.recipe
        model, tok = self._load()
        if name == r.baseline:
            t = time.time()
            res = evaluate_state(model, tok, r.eval, self.evals, name, self.log, cache=True)
            res.record["_timings"] = {f"eval/{name}": round(time.time() - t, 2)}
            return res
        from lab.train import finetune

        ft = self.plan[name]
        self.log(f"[lab] fine-tune {name}: {ft.method} on {ft.dataset_path} (n={ft.n_examples}, lr={ft.lr}, "
                 f"epochs={ft.epochs}, seed={ft.seed})")
        work = ctx.out_dir / "finetunes" / name
        shutil.rmtree(work, ignore_errors=True)
        t = time.time()
        model = finetune(model, tok, self.sets[name], ft.train_config(), work, log=self.log)
        t_train = round(time.time() - t, 2)
        shutil.rmtree(work / "trainer", ignore_errors=True)
        # other workers may take shares of the evaluation: they rebuild this model from the saved adapter
        n = split() if split is not None and ft.method == "lora" and ft.merge and not r.eval.do_sample else 1
        t = time.time()
        if n == 1:
            res = evaluate_state(model, tok, r.eval, self.evals, name, self.log)
        else:  # share 0 here; the margins are tasks of their own, one per language (`eval_margins`)
            res = evaluate_state(model, tok, r.eval, self.evals, name, self.log, shard=(0, n), margin=False)
            res.record.update(_split=n)
        res.record["_timings"] = {f"train/{name}": t_train, f"eval/{name}": round(time.time() - t, 2)}
        return res

    def _shard_model(self, name: str, ctx: RunContext):
        """The starting model + the state's saved adapter, merged as `finetune` merges it (the same weights);
        kept for the next share or margin task of the same state in this worker process."""
        if getattr(self, "_shard_cache", (None,))[0] != name:
            from peft import PeftModel

            self._shard_cache = (None,)  # the previous state's model goes before the next one loads
            model, tok = self._load()
            model = PeftModel.from_pretrained(model, str(ctx.out_dir / "finetunes" / name / "adapter")).merge_and_unload()
            for p in model.parameters():  # as `finetune` returns it: with requires_grad on, torch's CPU kernels
                p.requires_grad_(True)    # round the margins' last bits as in the state's own process
            model.eval()
            self._shard_cache = (name, model, tok)
        return self._shard_cache[1], self._shard_cache[2]

    def eval_shard(self, name: str, shard: tuple[int, int], ctx: RunContext) -> StateResult:
        """Share `shard` of a LoRA state's evaluation (no margins: `eval_margins`)."""
        model, tok = self._shard_model(name, ctx)
        return evaluate_state(model, tok, self.recipe.eval, self.evals, name, self.log, shard=shard, margin=False)

    def margin_langs(self, name: str) -> list[str]:
        return list(self.recipe.eval.langs) if self.recipe.eval.margin else []

    def eval_margins(self, name: str, lang: str, ctx: RunContext) -> list[list]:
        """The log-prob margins of one language of a split state: the same per-language call (same batches,
        same floats) that one process's evaluation makes (lab.evaluate.state_margins)."""
        from lab.evaluate import state_margins

        model, tok = self._shard_model(name, ctx)
        return state_margins(model, tok, self.evals, [lang], self.recipe.eval.system)

    def assemble(self, results: dict[str, dict], ctx: RunContext) -> dict:
        from lab.metrics import transfer_matrix

        models = {s: results[s]["metrics"] for s in self.states() if s in results}
        loophole = {s: results[s]["loophole"] for s in models}
        finetunes = {n: {"data": ft.data, "lang": ft.lang, "method": ft.method, "lr": ft.lr, "epochs": ft.epochs,
                         "n_examples": ft.n_examples, "seed": ft.seed, "base_state": ft.state}
                     for n, ft in self.plan.items() if n in models}
        judges = {s: {m: {k: v for k, v in j.items() if k != "disagreeing"} for m, j in results[s]["judges"].items()}
                  for s in models if "judges" in results[s]}
        self._disagreeing = [{"state": s, "detector": m, **d} for s in models for m, j in results[s].get("judges", {}).items()
                             for d in j["disagreeing"]]
        b = self.recipe.baseline
        out = {"baseline": b, "models": models, "loophole": loophole, "finetunes": finetunes,
               "transfer": transfer_matrix(models, baseline=b) if len(models) > 1 and b in models else None}
        if judges:
            out["judges"] = judges
        return out

    def write_report(self, out_dir, metrics: dict) -> None:
        from lab.data import read_jsonl, write_jsonl
        from lab.report import write_report

        base = read_jsonl(out_dir / "states" / f"{self.recipe.baseline}.generations.jsonl")
        write_jsonl(out_dir / "prompts.jsonl", [{"id": g["id"], "lang": g["lang"], "rendered": g["rendered"]} for g in base])
        if metrics.get("judges"):
            write_jsonl(out_dir / "disagreements.jsonl", getattr(self, "_disagreeing", []))
        write_report(out_dir, metrics)
