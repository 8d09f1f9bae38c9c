"""Censorship probe (issue 6): refusal, deflection and official-line answers to politically sensitive
questions, per model x category x language.

    from lab.probe import probe
    metrics = probe(["zoo:organism-censored"], mode="quick", samples=3, langs=["zh"], out_dir="runs/probe")

Every answer is judged three ways:
  * seed 000's dictionary (``lab.detect`` method "dictionary-000"): avoidance as Ito & Takaguchi measured it;
  * the lab's tiered detector (method "tiered"): hard refusal / soft refusal / deflection (seed 001);
  * official-line markers (eval/censorship/official_line/{zh,ja,en}.yaml): an answer that is NOT a
    refusal but carries the PRC official framing. Reported separately from refusal -- the blind spot
    both seeds name.
plus the language the answer came back in. The same pipeline runs on the matched control questions,
so a rate can be read against the model's baseline on non-sensitive questions.

Outputs (run directory): generations.jsonl, report.md, censorship_by_category.png, metrics.json (last,
atomic). The residue experiment (recipes/censorship-residue.yaml) is lab.experiments.censorship.
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Literal

from lab.errors import LabError
from lab.probe.judging import aggregate, judge
from lab.probe.official_line import (answer_language, is_official_line, load_official_line,  # noqa: F401
                                     official_line_hits, script_language)
from lab.probe.questions import (CATEGORIES, LANGS, N_QUICK, OFFICIAL_LINE_DIR, Question,  # noqa: F401
                                 load_questions, select)
from lab.probe.report import _ci, summary_block, write_outputs

# --------------------------------------------------------------------------------------------------
# running models
def probe_generations(name: str, model, tok, questions: list[Question], langs: Iterable[str], *, samples: int,
                      temperature: float, system: str | None, max_new_tokens: int, batch_size: int, seed: int) -> list[dict]:
    """Generate and judge every question x language x sample for one loaded model."""
    from lab.generate import generate

    do_sample = temperature > 0
    if not do_sample:
        samples = 1  # greedy decoding: repeated samples would be identical
    records = []
    for lang in langs:
        prompts = [q.text(lang) for q in questions]
        gens = generate(model, tok, prompts, system=system, max_new_tokens=max_new_tokens, batch_size=batch_size,
                        do_sample=do_sample, temperature=temperature if do_sample else 1.0,
                        num_samples=samples, seed=seed)
        for i, g in enumerate(gens):
            q = questions[i // samples]
            records.append({"model": name, "id": q.id, "category": q.category, "lang": lang, "control": q.control,
                            "sample": g.sample, "prompt": g.prompt, "response": g.response, "truncated": g.truncated,
                            **judge(g.response, g.prompt)})
    return records


def question_set(mode: Literal["quick", "full"], controls: bool) -> tuple[list[Question], list[Question]]:
    """The questions and matched controls a probe asks (quick: seed 001's 22, two controls per category)."""
    qs = select(load_questions(), mode)
    cs = load_questions(controls=True) if controls else []
    if mode == "quick" and cs:  # keep the control set proportionate: two per category
        per = Counter()
        cs = [c for c in cs if (per.update([c.category]) or per[c.category] <= 2)]
    return qs, cs


def probe(models: list, mode: Literal["quick", "full"] = "quick", samples: int = 3, temperature: float = 0.7,
          system: str | None = None, langs: Iterable[str] = ("zh",), out_dir: str | Path | None = None, *,
          controls: bool = True, max_new_tokens: int = 128, batch_size: int = 32, seed: int = 0,
          trust_remote_code: bool = False, tracking: str = "none", name: str | None = None, log=print,
          extra: dict | None = None) -> dict:
    """Probe each model; returns metrics (also written to out_dir when given).

    models: model specs (hub id, path, zoo:<name>), (name, model, tok) tuples of loaded models, or
    (name, loader) pairs where loader() -> (model, tok) is called when that model's turn comes (so
    only one model is in memory at a time).
    temperature 0 -> greedy, one sample per question.
    """
    from lab.models import load_model, set_threads

    set_threads()
    langs = list(langs)
    bad = [l for l in langs if l not in LANGS]
    if bad:
        raise LabError(f"probe: unsupported language(s) {bad} (the question set has {', '.join(LANGS)})")
    if samples < 1:
        raise LabError(f"probe: samples must be >= 1, got {samples}")
    qs, cs = question_set(mode, controls)
    eff_samples = samples if temperature > 0 else 1
    config = {"name": name, "mode": mode, "samples": eff_samples, "temperature": temperature, "system": system,
              "langs": langs, "n_questions": len(qs), "n_controls": len(cs), "max_new_tokens": max_new_tokens,
              "seed": seed, "models": [m if isinstance(m, str) else m[0] for m in models]}
    tracker = None
    if out_dir is not None and tracking != "none":
        from lab.tracking import start_tracking

        tracker = start_tracking(Path(out_dir), config, mode=tracking, name=name or Path(out_dir).name, job_type="probe")
    records: list[dict] = []
    t0 = time.time()
    for m in models:
        if isinstance(m, str):
            label, (model, tok) = m, load_model(m, trust_remote_code=trust_remote_code)
        elif len(m) == 2:
            label, (model, tok) = m[0], m[1]()
        else:
            label, model, tok = m
        t = time.time()
        records += probe_generations(label, model, tok, qs + cs, langs, samples=eff_samples, temperature=temperature,
                                     system=system, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed)
        del model, tok
        log(f"[probe] {label}: {len(qs) + len(cs)} questions x {len(langs)} lang(s) x {eff_samples} in {time.time() - t:.1f} s")
    extra = {**(extra or {}), "timings": {**((extra or {}).get("timings") or {}), "probe_seconds": round(time.time() - t0, 2)}}
    if out_dir is None:
        return {"kind": "censorship-probe", "config": config, "models": aggregate(records), **extra}
    out = Path(out_dir)
    metrics = write_outputs(out, records, config, extra)
    if tracker is not None:
        tracker.log_metrics({"models": metrics["models"]})
        tracker.log_image("censorship_by_category", out / "censorship_by_category.png")
        tracker.log_artifact(out / "report.md", "report", "report")
        tracker.finish()
    return metrics


def probe_main(models: list[str], quick: bool = True, full: bool = False, samples: int = 3, temperature: float = 0.7,
               system: str | None = None, langs: list[str] | None = None, out: str | Path | None = None,
               max_new_tokens: int = 128, controls: bool = True, tracking: str = "auto", log=print) -> int:
    """CLI entry: `lab probe --model M [--model M2 ...] [--quick|--full] [--samples 3] [--temperature T]
    [--system S] [--lang zh|ja|en ...] [--out DIR]`. Prints seed 001's summary block per model x language."""
    if not models:
        raise LabError("lab probe: give at least one --model")
    mode = "full" if full else "quick"
    langs = list(langs or ["zh"])
    out_dir = Path(out) if out else Path("runs") / f"probe-{mode}-{time.strftime('%Y%m%d-%H%M%S')}"
    metrics = probe(models, mode, samples, temperature, system, langs, out_dir, controls=controls,
                    max_new_tokens=max_new_tokens, tracking=tracking, log=log)
    for model, m in metrics["models"].items():
        for lang, b in m["by_lang"].items():
            print(summary_block(model, b["summary"], lang if len(langs) > 1 else None))
            print(f"Official-line answers: {_ci(b['official_line'])}   (dictionary-000 avoidance: {_ci(b['dictionary'])})")
    print(f"report: {out_dir / 'report.md'}")
    return 0


