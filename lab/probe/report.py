"""The probe's report: seed 001's summary block, markdown tables, the by-category figure, outputs."""
from __future__ import annotations

from pathlib import Path


from lab.data import atomic_write_text, write_json, write_jsonl
from lab.probe.judging import aggregate
from lab.probe.questions import CATEGORIES
from lab.report import save_figure

# --------------------------------------------------------------------------------------------------
# presentation
def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def summary_block(model: str, s: dict, title: str | None = None) -> str:
    """Seed 001's one-screen summary (section 8.2), counts over answers."""
    n = s["answers"] or 0
    f = lambda k: f"{k} ({100 * k / n:.1f}%)" if n else f"{k}"
    extra = f"  ({n} answers)" if n != s["total_questions"] else ""
    bar = "=" * 50
    return "\n".join([bar, f"Model: {model}" + (f"  [{title}]" if title else ""), bar,
                      f"Total questions: {s['total_questions']}{extra}",
                      f"Hard refusals: {f(s['hard_refusals'])}",
                      f"Soft refusals: {f(s['soft_refusals'])}",
                      f"Deflections: {f(s['deflections'])}",
                      f"Total censorship: {_pct(s['total_censorship'])}", bar])


def _ci(b: dict) -> str:
    return f"{_pct(b['rate'])} [{100 * b['ci'][0]:.0f}–{100 * b['ci'][1]:.0f}] ({b['k']}/{b['n']})"


def render_report(metrics: dict) -> str:
    cfg = metrics["config"]
    lines = [f"# Censorship probe — {cfg.get('name') or 'probe'}", "",
             f"Question set: **{cfg['mode']}** ({cfg['n_questions']} questions × {cfg['samples']} samples, "
             f"temperature {cfg['temperature']}, system prompt: {cfg['system']!r}); languages: {', '.join(cfg['langs'])}; "
             f"controls: {cfg['n_controls']} questions.", "",
             "Rates are over answers, with 95 % Wilson intervals and counts. *dictionary* = seed 000's Appendix-2 "
             "dictionary (Chinese strings only: it cannot see refusals in ja/en); *tiered* = the lab's detector "
             "(hard + soft + deflection); *official line* = answers the tiered detector does NOT count as refusals "
             "that carry PRC official-framing markers (eval/censorship/official_line/, see the README section Censorship probe for "
             "limits).", ""]
    for model, m in metrics["models"].items():
        lines += [f"## {model}", "", "```"]
        for lang, b in m["by_lang"].items():
            lines.append(summary_block(model, b["summary"], f"{lang}"))
        lines += ["```", "", "| lang | dictionary-000 | tiered | official line | official among compliant | answer languages | controls: tiered | controls: official |",
                  "|---|---|---|---|---|---|---|---|"]
        ctl = (m.get("controls") or {}).get("by_lang", {})
        for lang, b in m["by_lang"].items():
            al = ", ".join(f"{k} {v}" for k, v in b["answer_langs"].items())
            cb = ctl.get(lang)
            lines.append(f"| {lang} | {_ci(b['dictionary'])} | {_ci(b['tiered'])} | {_ci(b['official_line'])} | "
                         f"{_ci(b['official_line_among_compliant'])} | {al} | "
                         f"{_ci(cb['tiered']) if cb else '–'} | {_ci(cb['official_line']) if cb else '–'} |")
        for lang, b in m["by_lang"].items():
            lines += ["", f"### {model} — {lang}, by category", "",
                      "| category | n | dictionary-000 | tiered | hard / soft / deflection | official line | answer languages |",
                      "|---|---|---|---|---|---|---|"]
            for cat, cb in b["by_category"].items():
                s = cb["summary"]
                al = ", ".join(f"{k} {v}" for k, v in cb["answer_langs"].items())
                lines.append(f"| {cat} ({CATEGORIES[cat][0]}) | {cb['n']} | {_ci(cb['dictionary'])} | {_ci(cb['tiered'])} | "
                             f"{s['hard_refusals']} / {s['soft_refusals']} / {s['deflections']} | {_ci(cb['official_line'])} | {al} |")
        lines.append("")
    ex = metrics.get("examples") or []
    if ex:
        lines += ["## Official-line answers (examples)", ""]
        for e in ex:
            lines.append(f"- **{e['model']}** `{e['id']}` [{e['lang']}] {e['prompt']} → {e['response'][:200]!r} "
                         f"— markers: {', '.join(e['markers'])}")
        lines.append("")
    lines += ["![censorship by category](censorship_by_category.png)", ""]
    return "\n".join(lines)


def plot(metrics: dict, path: Path) -> None:
    """Per-category bars (dictionary-000, tiered, official line), one panel per model x language."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(model, lang, b) for model, m in metrics["models"].items() for lang, b in m["by_lang"].items()]
    if not panels:
        return
    cats = list(CATEGORIES)
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 2.6 * len(panels)), squeeze=False)
    width = 0.27
    for ax, (model, lang, b) in zip(axes[:, 0], panels):
        for j, (key, label) in enumerate((("dictionary", "dictionary-000"), ("tiered", "tiered"),
                                          ("official_line", "official line"))):
            vals, errs = [], [[], []]
            for c in cats:
                cb = b["by_category"].get(c)
                r = cb[key]["rate"] if cb and cb[key]["rate"] is not None else 0.0
                lo, hi = (cb[key]["ci"] if cb else (0.0, 0.0))
                vals.append(100 * r)
                errs[0].append(max(0.0, 100 * (r - lo)))
                errs[1].append(max(0.0, 100 * (hi - r)))
            ax.bar([i + (j - 1) * width for i in range(len(cats))], vals, width, yerr=errs, capsize=2, label=label)
        ax.set_title(f"{model} — {lang}", fontsize=9)
        ax.set_ylim(0, 105)
        ax.set_ylabel("% of answers", fontsize=8)
        ax.set_xticks(range(len(cats)))
        ax.set_xticklabels(cats, rotation=30, ha="right", fontsize=7)
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    save_figure(fig, path)


def write_outputs(out_dir: Path, records: list[dict], config: dict, extra: dict | None = None) -> dict:
    """generations.jsonl, report.md, censorship_by_category.png, then metrics.json (atomic, last)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "generations.jsonl", records)
    examples = [{"model": r["model"], "id": r["id"], "lang": r["lang"], "prompt": r["prompt"], "response": r["response"],
                 "markers": r["official_markers"]} for r in records if r["official_line"] and not r.get("control")][:8]
    metrics = {"kind": "censorship-probe", "config": config, "models": aggregate(records), "examples": examples,
               **(extra or {})}
    atomic_write_text(out_dir / "report.md", render_report(metrics))
    plot(metrics, out_dir / "censorship_by_category.png")
    write_json(out_dir / "metrics.json", metrics)
    return metrics


