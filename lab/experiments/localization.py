"""kind: localization — where does safety live in the weights, per language, and what do pruning,
masked attacks, freezing and restoring the safety weights do? (Wei et al. 2024; Poppi et al. 2025)

Masks (computed once on the aligned model in prepare(), saved under <run>/masks/, reloaded on resume):
  main          top-q % safety score (safety data, all languages, each weighted equally) minus top-p %
                utility score (Wei et al.'s set difference)
  safety-<l>    the same with one language's data -> Jaccard overlap table vs same-size random masks
  sweep-<s>     exactly s % of the weights: the top s % by safety score outside the top-p % utility set
  random-*      for every mask, a random mask with the same number of weights in every matrix

States (each evaluated per language with Wilson CIs):
  aligned, base                       the model and its helpful-only base, untouched
  pruned-safety / -random             main mask set to zero
  restored-base-safety / -random      main mask copied from the base model
  masked-attack-S / -S-random         full fine-tuning where only the sweep mask of size S % may change
  attack-full, attack-lora            the unconstrained attacks (references)
  frozen-attack-{lora,full}[-random]  the same attacks with the main mask frozen
  restored / restored-random          attack-full, then the main mask copied back from the aligned model
"""
from __future__ import annotations

import copy
import json
import shutil
import time
from typing import Literal

from pydantic import Field

from lab.config import FineTune, RecipeBase, Strict
from lab.errors import LabError
from lab.experiments.base import (Experiment, RunContext, StateResult, canary, check_loading, check_model_and_prompts,
                                  evaluate_state)

INTERVENTIONS = ("prune", "restore-base", "masked-attack", "freeze", "restore", "sil", "actsvd")


class Attribution(Strict):
    method: Literal["snip", "snip-pooled", "wanda", "random"] = "snip"
    q: float = Field(5.0, gt=0, le=100, description="percent: top-q % by safety score")
    p: float | None = Field(5.0, gt=0, le=100, description="percent: minus top-p % by utility score (null: no set difference)")
    scope: Literal["global", "per-matrix", "per-row"] = "per-matrix"
    n_examples: int = Field(64, ge=1, description="calibration examples per language")
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(160, ge=8)
    per_language: bool = True


class SIL(Strict):
    """Poppi et al.'s Safety Information Localization (lab.attribution.sil): per attack language, a full
    attack on that language's harmful set, then the top-k % of |Δθ| ⊙ E_x|∇L(x)| on its own data."""
    langs: list[Literal["zh", "ja", "en", "it", "hi"]] = Field(default_factory=lambda: ["en", "zh", "hi"], min_length=2)
    k: float = Field(20.0, gt=0, le=100, description="percent of linear weights per language")
    test_lang: Literal["zh", "ja", "en", "it", "hi"] = Field("en", description="whose SIL mask the masked/frozen attacks use")


class ActSVD(Strict):
    """Wei et al.'s ActSVD (lab.attribution.actsvd): remove each linear layer's rank-r safety output
    subspace, orthogonal to the utility subspace: W <- W - (I - P_u) P_s W."""
    safety_rank: float = Field(0.05, gt=0, description="rank of P_s: an int, or a fraction of min(d_out, d_in)")
    utility_rank: float | None = Field(0.5, gt=0, description="rank of P_u (null: remove P_s W alone)")


class LocalizationRecipe(RecipeBase):
    kind: Literal["localization"]
    base_model: str = Field("zoo:organism-base", description="helpful-only model: the source for restored-base-*")
    attribution: Attribution = Field(default_factory=Attribution)
    attack: FineTune = Field(default_factory=FineTune, description="the attack (LoRA settings; lr for LoRA)")
    full_attack_lr: float = Field(1e-3, gt=0, description="learning rate of the full-parameter attacks")
    defaults: dict = Field(default_factory=dict, description="values applied to the attack unless it sets them")
    interventions: list[Literal[INTERVENTIONS]] = Field(default_factory=lambda: list(INTERVENTIONS))
    masked_attack_sizes: list[float] = Field(default_factory=lambda: [1, 5, 20, 50])
    random_control: bool = True
    sil: SIL = Field(default_factory=SIL)
    actsvd: ActSVD = Field(default_factory=ActSVD)


class LocalizationExperiment(Experiment):
    kind = "localization"
    Recipe = LocalizationRecipe
    serial_states = ("aligned", "base", "attack-full")

    # ------------------------------------------------------------------ plan
    def validate(self) -> None:
        from lab.public_data import load_eval_source
        from lab.models import resolve

        r = self.recipe
        if not r.interventions:
            raise LabError("localization: key 'interventions' is empty (choose from " + ", ".join(INTERVENTIONS) + ")")
        self.evals = load_eval_source(r.eval.data, r.eval.langs, r.eval.limit)
        if not self.evals:
            raise LabError(f"{r.eval.data}: no evaluation prompts for languages {r.eval.langs}")
        self.attack_recs = [x.model_dump() for x in r.attack.load_records()]
        self.safety = self._calibration("safety")
        self.utility = self._calibration("utility") if r.attribution.p is not None else {}
        resolve(r.base_model)
        check_loading(r)
        check_model_and_prompts(r.model, [e.prompt for e in self.evals], r.eval.max_new_tokens,
                                trust_remote_code=r.trust_remote_code)

    def _calibration(self, data: str) -> dict[str, list[dict]]:
        from lab.data import SPLITS_DIR, load_finetune_set

        return {l: [x.model_dump() for x in load_finetune_set(SPLITS_DIR / f"{data}-{l}.jsonl", self.recipe.attribution.n_examples)]
                for l in self.recipe.eval.langs}

    def _controls(self) -> list[str]:
        return ["safety", "random"] if self.recipe.random_control else ["safety"]

    def states(self) -> list[str]:
        r, iv = self.recipe, set(self.recipe.interventions)
        sfx = lambda label: "" if label == "safety" else f"-{label}"
        out = ["aligned", "base"]
        if "prune" in iv:
            out += [f"pruned-{c}" for c in self._controls()]
        if "restore-base" in iv:
            out += [f"restored-base-{c}" for c in self._controls()]
        if "masked-attack" in iv:
            out += [f"masked-attack-{s:g}{sfx(c)}" for s in r.masked_attack_sizes for c in self._controls()]
        if iv & {"freeze", "restore"}:
            out.append("attack-full")
        if "freeze" in iv:
            out.append("attack-lora")
            out += [f"frozen-attack-{m}{sfx(c)}" for m in ("lora", "full") for c in self._controls()]
        if "restore" in iv:
            out += ["restored" + sfx(c) for c in self._controls()]
        if "actsvd" in iv:
            out.append("actsvd-removed")
        if "sil" in iv:
            out += [f"sil-masked-attack{sfx(c)}" for c in self._controls()]
            out += [f"sil-frozen-attack{sfx(c)}" for c in self._controls()]
        return out

    # ------------------------------------------------------------------ masks (shared artifacts)
    def prepare(self, ctx: RunContext) -> None:
        from lab.attribution import analysis, masks

        mdir = ctx.out_dir / "masks"
        self.aligned, self.tok = self.recipe.load_model()
        if not (mdir / "done.json").is_file():
            self._compute_masks(ctx, mdir)
        self.masks = {p.name[: -len(".safetensors")]: masks.load_mask(p)[0] for p in sorted(mdir.glob("*.safetensors"))}
        self.mask_info = json.loads((mdir / "done.json").read_text())
        del analysis
        if not ctx.worker and self.recipe.eval.canary and any(not ctx.done(s) for s in self.states() if "attack" in s):
            canary(self.aligned, self.tok, self.recipe.model, self.recipe.eval, self.log)

    def _compute_masks(self, ctx: RunContext, mdir) -> None:
        from lab.attribution import analysis, masks, scores
        from lab.data import atomic_write_text, write_json

        r, a = self.recipe, self.recipe.attribution
        t = time.time()
        langs = list(r.eval.langs)

        def score(recs_by_lang, group, salt=0):
            if a.method == "random":
                return scores.random_scores(self.aligned, seed=r.seed + salt)
            b = scores.build_balanced_calibration(self.tok, {l: recs_by_lang[l] for l in group},
                                                  batch_size=a.batch_size, max_length=a.max_length)
            return scores.compute_scores(self.aligned, a.method, b, seed=r.seed)

        s_all = score(self.safety, langs, 1)
        u_all = score(self.utility, langs, 2) if a.p is not None else None
        main = masks.set_difference_mask(s_all, u_all, a.q, a.p, a.scope)
        meta = {"model": r.model, "method": a.method, "q": a.q, "p": a.p, "scope": a.scope, "n_examples": a.n_examples}
        tmp = mdir.with_name("masks.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        found = {"main": main, "random-main": analysis.random_mask_like(main, seed=r.seed + 17)}
        info = {"main": {"fraction": masks.mask_fraction(main), "q": a.q, "p": a.p, "scope": a.scope, "method": a.method}}
        overlap = []
        if a.per_language and len(langs) > 1:
            per_lang = {}
            for i, l in enumerate(langs):
                s_l = score(self.safety, [l], 10 + i)
                u_l = score(self.utility, [l], 20 + i) if a.p is not None else None
                per_lang[l] = found[f"safety-{l}"] = masks.set_difference_mask(s_l, u_l, a.q, a.p, a.scope)
                info[f"safety-{l}"] = {"fraction": masks.mask_fraction(per_lang[l])}
            per_lang_all = {**per_lang, "all": main}
            overlap = analysis.overlap_table(per_lang_all, seed=r.seed)
            tmp.mkdir(parents=True, exist_ok=True)
            atomic_write_text(tmp / "overlap.md", analysis.overlap_matrix_markdown(per_lang_all, overlap) + "\n")
        if "masked-attack" in r.interventions:
            adj = s_all
            if u_all is not None:
                umask = masks.top_q_mask(u_all, a.p, a.scope)
                adj = {n: s_all[n].masked_fill(umask[n], 0) for n in s_all}
            for size in r.masked_attack_sizes:
                m = found[f"sweep-{size:g}"] = masks.top_q_mask(adj, size, a.scope)
                found[f"random-sweep-{size:g}"] = analysis.random_mask_like(m, seed=r.seed + int(size * 10))
                info[f"sweep-{size:g}"] = {"fraction": masks.mask_fraction(m)}
        if "sil" in r.interventions:
            info["_sil"] = self._sil_masks(ctx, found)
        if "actsvd" in r.interventions:
            from lab.attribution import actsvd
            from safetensors.torch import save_file

            cal = lambda recs: scores.build_balanced_calibration(self.tok, recs, batch_size=a.batch_size,
                                                                 max_length=a.max_length)
            rk = lambda x: int(x) if x >= 1 else x
            vs = actsvd.actsvd_subspaces(self.aligned, cal(self.safety), rk(r.actsvd.safety_rank))
            vu = actsvd.actsvd_subspaces(self.aligned, cal(self.utility or self._calibration("utility")),
                                         rk(r.actsvd.utility_rank)) if r.actsvd.utility_rank else {}
            tmp.mkdir(parents=True, exist_ok=True)
            save_file({**{f"s::{k}": v.contiguous() for k, v in vs.items()}, **{f"u::{k}": v.contiguous() for k, v in vu.items()}},
                      str(tmp / "actsvd.subspaces"))
            info["_actsvd"] = {"safety_rank": r.actsvd.safety_rank, "utility_rank": r.actsvd.utility_rank,
                               "matrices": len(vs)}
        tmp.mkdir(parents=True, exist_ok=True)
        for name, m in found.items():
            masks.save_mask(m, tmp / name, {**meta, "mask": name})
        analysis.heatmap(main, ctx.out_dir / "heatmap-all.png",
                         f"{a.method} safety mask (all languages): top {a.q}% minus utility top {a.p}%")
        info["_overlap"] = overlap
        info["_seconds"] = round(time.time() - t, 2)
        write_json(tmp / "done.json", info)
        shutil.rmtree(mdir, ignore_errors=True)
        tmp.rename(mdir)
        self.log(f"  main mask: {100 * info['main']['fraction']:.2f}% of linear weights ({info['_seconds']:.1f} s)")

    def _sil_masks(self, ctx: RunContext, found: dict) -> dict:
        """Per SIL language: a full attack on its harmful set, SIL scores on that set, the top-k % mask."""
        from lab.attribution import analysis, masks, scores, sil

        r = self.recipe
        by_lang, secs = {}, {}
        for l in r.sil.langs:
            t = time.time()
            recs = [x.model_dump() for x in r.attack.model_copy(update={"lang": l, "path": None}).load_records()]
            attacked = self._attack(ctx, f"sil-source-{l}", "full", recs=recs)
            b = scores.build_calibration(self.tok, recs[: r.attribution.n_examples], batch_size=r.attribution.batch_size,
                                         max_length=r.attribution.max_length)
            by_lang[l] = sil.sil_scores(attacked, self.aligned, b)
            shutil.rmtree(ctx.out_dir / "finetunes" / f"sil-source-{l}", ignore_errors=True)
            secs[l] = round(time.time() - t, 2)
            del attacked
        ms = sil.sil_masks(by_lang, r.sil.k, r.attribution.scope)
        for l, m in ms.items():
            found[f"sil-{l}"] = m
        test = ms[r.sil.test_lang]
        found["random-sil"] = analysis.random_mask_like(test, seed=r.seed + 31)
        overlap = sil.cross_language_overlap(ms, seed=r.seed)
        self.log(f"  SIL masks ({', '.join(r.sil.langs)}, top {r.sil.k}%): all-language intersection "
                 f"{overlap['all']['ratio']:.2f}x random")
        return {"overlap": overlap, "fraction": {l: masks.mask_fraction(m) for l, m in ms.items()}, "seconds": secs}

    # ------------------------------------------------------------------ states
    def _attack(self, ctx, state: str, method: str, mask=None, mode: str = "only", recs=None):
        from lab.train import finetune

        r = self.recipe
        hooks = []
        if mask is not None:
            from lab.attribution.interventions import GradMaskHook

            hooks.append(GradMaskHook(mask, mode))
        cfg = r.attack.train_config(method=method, lr=r.full_attack_lr if method == "full" else r.attack.lr,
                                    seed=r.seed, merge=True)
        work = ctx.out_dir / "finetunes" / state
        shutil.rmtree(work, ignore_errors=True)
        mdl = finetune(copy.deepcopy(self.aligned), self.tok, recs if recs is not None else self.attack_recs, cfg, work,
                       hooks=hooks, log=self.log)
        shutil.rmtree(work / "trainer", ignore_errors=True)
        return mdl

    def _changed(self, mdl, mask, fixed_is_mask: bool) -> int:
        """Entries that changed although the mask said they must not (must be 0)."""
        ref = dict(self.aligned.named_parameters())
        n = 0
        for k, v in mdl.named_parameters():
            if k in mask:
                fixed = mask[k] if fixed_is_mask else ~mask[k]
                n += int((v.detach()[fixed] != ref[k].detach()[fixed]).sum())
        return n

    def run_state(self, name: str, ctx: RunContext) -> StateResult:
        from lab.attribution import interventions

        r = self.recipe
        label = "random" if name.endswith("-random") else "safety"
        main = self.masks["main" if label == "safety" else "random-main"]
        t, check, desc = time.time(), None, ""
        if name == "aligned":
            mdl, desc = self.aligned, "the aligned model, untouched"
        elif name == "base":
            mdl, _ = r.load_model(r.base_model)
            desc = "the helpful-only base model, untouched"
        elif name.startswith("pruned-"):
            mdl = copy.deepcopy(self.aligned)
            interventions.prune(mdl, main)
            desc = f"aligned with the {label} mask zeroed"
        elif name.startswith("restored-base-"):
            mdl = copy.deepcopy(self.aligned)
            base, _ = r.load_model(r.base_model)
            interventions.restore(mdl, base, main)
            desc = f"aligned with the {label} mask copied from the base model"
        elif name.startswith("masked-attack-"):
            size = name[len("masked-attack-"):].removesuffix("-random")
            m = self.masks[("random-sweep-" if label == "random" else "sweep-") + size]
            mdl = self._attack(ctx, name, "full", m, "only")
            check = self._changed(mdl, m, fixed_is_mask=False)
            desc = f"full fine-tuning on the attack set; only the {label} mask ({size}% of linear weights) may change"
        elif name in ("attack-full", "attack-lora"):
            method = name.split("-")[1]
            mdl = self._attack(ctx, name, method)
            if method == "full" and "restore" in r.interventions:
                from safetensors.torch import save_file

                save_file({k: v.detach().clone().contiguous() for k, v in mdl.state_dict().items()},  # untie
                          str(ctx.out_dir / "finetunes" / name / "model.safetensors"))
            desc = f"{'full' if method == 'full' else 'LoRA'} fine-tuning on the attack set, unconstrained"
        elif name.startswith("frozen-attack-"):
            method = name.split("-")[2]
            mdl = self._attack(ctx, name, method, main, "freeze")
            check = self._changed(mdl, main, fixed_is_mask=True)
            desc = f"{method} attack with the {label} mask frozen"
        elif name.startswith("restored"):
            from safetensors.torch import load_file

            mdl = copy.deepcopy(self.aligned)
            attacked = load_file(str(ctx.out_dir / "finetunes" / "attack-full" / "model.safetensors"))
            mdl.load_state_dict(attacked)
            n = interventions.restore(mdl, self.aligned, main)
            moved = sum(int((v != attacked[k]).sum()) for k, v in mdl.state_dict().items())
            check = 0 if moved <= n else moved
            desc = f"attack-full, then the {label} mask copied back from the aligned model"
        elif name == "actsvd-removed":
            from lab.attribution import actsvd
            from safetensors.torch import load_file

            sub = load_file(str(ctx.out_dir / "masks" / "actsvd.subspaces"))
            vs = {k[3:]: v for k, v in sub.items() if k.startswith("s::")}
            vu = {k[3:]: v for k, v in sub.items() if k.startswith("u::")} or None
            mdl = copy.deepcopy(self.aligned)
            actsvd.remove_subspace(mdl, vs, vu)
            desc = (f"aligned with each linear layer's rank-{r.actsvd.safety_rank:g} safety output subspace removed"
                    + (f" orthogonally to the rank-{r.actsvd.utility_rank:g} utility subspace" if vu else ""))
        elif name.startswith("sil-"):
            m = self.masks["random-sil" if label == "random" else f"sil-{r.sil.test_lang}"]
            mode = "only" if name.startswith("sil-masked") else "freeze"
            mdl = self._attack(ctx, name, "full", m, mode)
            check = self._changed(mdl, m, fixed_is_mask=(mode == "freeze"))
            what = "only" if mode == "only" else "all but"
            desc = (f"full attack on the attack set where {what} the {label} mask (SIL of {r.sil.test_lang}, "
                    f"{r.sil.k:g}% of linear weights) may change")
        else:  # pragma: no cover - states() and run_state() list the same names
            raise LabError(f"localization: unknown state {name!r}")
        if check:
            raise LabError(f"{name}: masked training changed {check} weights outside its mask")
        res = evaluate_state(mdl, self.tok, r.eval, self.evals, name, self.log, cache=name in ("aligned", "base"))
        res.record.update({"description": desc, "mask_check": check,
                           "_timings": {f"state/{name}": round(time.time() - t, 2)}})
        return res

    # ------------------------------------------------------------------ metrics and report
    def assemble(self, results: dict[str, dict], ctx: RunContext) -> dict:
        from lab.metrics import transfer_matrix

        models = {s: results[s]["metrics"] for s in self.states() if s in results}
        info = json.loads((ctx.out_dir / "masks" / "done.json").read_text())
        return {"base_model": self.recipe.base_model, "models": models,
                "states": {s: results[s]["description"] for s in models},
                "masks": {k: v for k, v in info.items() if not k.startswith("_")}, "overlap": info.get("_overlap", []),
                "sil": info.get("_sil"), "actsvd": info.get("_actsvd"),
                "mask_checks": {"changed_outside_mask": {s: results[s]["mask_check"] for s in models
                                                         if results[s]["mask_check"] is not None}},
                "transfer": transfer_matrix(models) if len(models) > 1 else None}

    def write_report(self, out_dir, metrics: dict) -> None:
        from lab.data import atomic_write_text
        from lab.report import refusal_table

        r, a = self.recipe, self.recipe.attribution
        main = metrics["masks"]["main"]["fraction"]
        n = {l: metrics["models"]["aligned"][l]["n_harmful"] for l in r.eval.langs}
        lines = ["# safety-localization", "",
                 f"Model `{r.model}`, base `{r.base_model}`; {a.method} masks (top {a.q}% safety minus top {a.p}% "
                 f"utility, {a.scope}); main mask = {100 * main:.2f}% of linear weights. Eval: harmful prompts per "
                 f"language {n}. Cells: refusal % [95% Wilson CI].", "",
                 refusal_table(metrics["models"], list(r.eval.langs)), "", "## States", ""]
        lines += [f"- `{s}`: {d}" for s, d in metrics["states"].items()]
        if (out_dir / "masks" / "overlap.md").is_file():
            lines += ["", "## Per-language mask overlap (Jaccard)", "", (out_dir / "masks" / "overlap.md").read_text()]
        if metrics.get("sil"):
            o = metrics["sil"]["overlap"]
            lines += ["", f"## SIL (Poppi et al.): top {r.sil.k:g}% per attack language", "",
                      "| pair | Jaccard | random (same sizes) |", "|---|---|---|"]
            lines += [f"| {x['a']}–{x['b']} | {x['jaccard']:.3f} | {x['random_jaccard']:.3f} |" for x in o["pairs"]
                      if "a" in x and "jaccard" in x]
            a_ = o["all"]
            lines += ["", f"Weights in every language's SIL mask: {a_['intersection']:,} of {a_['total']:,} "
                          f"({a_['ratio']:.2f}x same-size random masks)."]
        diverged = metrics.get("diverged") or {}
        if diverged:
            lines += ["", "## Diverged (no result)", ""] + [f"- `{s}`: {m}" for s, m in diverged.items()]
        atomic_write_text(out_dir / "report.md", "\n".join(lines) + "\n")
