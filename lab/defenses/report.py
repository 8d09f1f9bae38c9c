"""kind: defense results: the summary table (defense x threat x attack language), the Pareto plot
(harmful refusal vs fine-tune accuracy) and the per-language view, from the states' records."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from lab.defenses import STAGES
from lab.report import save_figure
from lab.stats import t_interval


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _row(entry: dict, langs: list[str]) -> dict:
    m = entry["metrics"]
    return {"harmful": {l: m[l]["harmful_refusal"] for l in langs if l in m},
            "benign": {l: m[l]["benign_refusal"] for l in langs if l in m},
            "harmful_mean": _mean([m[l]["harmful_refusal"] for l in langs if l in m]),
            "benign_mean": _mean([m[l]["benign_refusal"] for l in langs if l in m]),
            "fa": entry["fa"]["fa"], "seconds": entry.get("seconds"), "peak_mib": entry.get("peak_mib")}


def _ci(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    m, lo, hi = t_interval(vals)
    return {"mean": m, "lo": lo, "hi": hi, "n": len(vals)}


def summarize(recipe, plan: dict, builds: list[str], results: dict) -> dict:
    langs = list(recipe.eval.langs)
    s0 = recipe.seeds[0]
    cells = []
    for state, c in plan.items():
        rec = results.get(state)
        if rec is None:
            continue
        for d, entry in rec["defenses"].items():
            cells.append({**c, "defense": d, "state": state, **_row(entry, langs)})
    none_sec = {(x["threat"], x["lang"], x["seed"], x.get("lr"), x.get("epochs")): x for x in cells if x["defense"] == "none"}
    for x in cells:
        ref = none_sec.get((x["threat"], x["lang"], x["seed"], x.get("lr"), x.get("epochs")))
        if x["defense"] == "none" or ref is None:
            x["extra_seconds"], x["extra_peak_mib"] = 0.0, 0.0
        elif STAGES[x["defense"]] == "post-fine-tuning":       # applied on top of the shared undefended fine-tune
            x["extra_seconds"], x["extra_peak_mib"] = x["seconds"], x["peak_mib"]
        else:
            x["extra_seconds"] = x["seconds"] - ref["seconds"]
            x["extra_peak_mib"] = (x["peak_mib"] - ref["peak_mib"]) if None not in (x["peak_mib"], ref["peak_mib"]) else None
    table = []
    groups = defaultdict(list)
    for x in cells:
        if x["threat"] in ("harmful", "faas"):
            groups[(x["defense"], x["threat"], x["lang"])].append(x)
    for (d, threat, lang), xs in groups.items():
        worst_pool = [x for x in cells if x["defense"] == d and x["lang"] == lang and x["seed"] == s0
                      and x["threat"] in ("harmful", "grid")]
        worst = min(worst_pool, key=lambda x: x["harmful_mean"]) if threat == "harmful" and worst_pool else None
        table.append({
            "defense": d, "stage": STAGES[d], "threat": threat, "attack_lang": lang, "n_seeds": len(xs),
            "harmful": {l: _ci([x["harmful"].get(l) for x in xs]) for l in langs},
            "harmful_mean": _ci([x["harmful_mean"] for x in xs]), "benign_mean": _ci([x["benign_mean"] for x in xs]),
            "fa": _ci([x["fa"] for x in xs]), "extra_seconds": _ci([x["extra_seconds"] for x in xs]),
            "extra_peak_mib": _ci([x["extra_peak_mib"] for x in xs]),
            "worst_case": None if worst is None else {"harmful_mean": worst["harmful_mean"], "lr": worst.get("lr", recipe.attack.lr),
                                                      "epochs": worst.get("epochs", recipe.attack.epochs),
                                                      "n_points": len(worst_pool)},
        })
    order = {d: i for i, d in enumerate(recipe.defenses)}
    table.sort(key=lambda t: (t["threat"], t["attack_lang"], order.get(t["defense"], 99)))
    sweep = defaultdict(dict)
    for x in cells:
        if x["defense"] == "none" and x["seed"] == s0 and x["threat"] in ("sweep", "faas"):  # the user's fine-tune config
            sweep[x["lang"]][f"{x['p']:g}"] = {"harmful_mean": x["harmful_mean"], "fa": x["fa"]}
    aligned = results.get("aligned", {})
    variants = {d: {"metrics": results[f"build-{d}"]["metrics"], "fa": results[f"build-{d}"]["fa"],
                    "build_seconds": results[f"build-{d}"]["build_seconds"], "peak_mib": results[f"build-{d}"].get("peak_mib")}
                for d in builds if f"build-{d}" in results}
    models = {"aligned": aligned.get("metrics", {})}
    models.update({f"build-{d}": v["metrics"] for d, v in variants.items()})
    return {"langs": langs, "table": table, "cells": cells, "p_sweep": dict(sweep), "variants": variants,
            "aligned": aligned, "models": models}


def _f(ci, pct=True, digits=0):
    if ci is None:
        return "—"
    if isinstance(ci, dict):
        m, lo, hi, n = ci["mean"], ci["lo"], ci["hi"], ci["n"]
    else:
        m, lo, hi, n = ci, ci, ci, 1
    k = 100 if pct else 1
    s = f"{m * k:.{digits}f}"
    return s + (f" ±{(hi - lo) / 2 * k:.{digits}f}" if n > 1 else "")


def pareto_plot(metrics: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [t for t in metrics["table"] if t["threat"] == "faas"]
    langs = sorted({t["attack_lang"] for t in rows})
    if not rows:
        return
    fig, axes = plt.subplots(1, len(langs), figsize=(6 * len(langs), 5), squeeze=False)
    for ax, lang in zip(axes[0], langs):
        pts = [(t["fa"]["mean"] * 100, t["harmful_mean"]["mean"] * 100, t["defense"]) for t in rows
               if t["attack_lang"] == lang and t["fa"] and t["harmful_mean"]]
        front = [p for p in pts if not any(q[0] >= p[0] and q[1] >= p[1] and q[:2] != p[:2] for q in pts)]
        for x, y, d in pts:
            ax.scatter(x, y, s=50, color="tab:red" if (x, y, d) in front else "tab:gray")
            ax.annotate(d, (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
        fr = sorted(front)
        ax.plot([p[0] for p in fr], [p[1] for p in fr], "r--", lw=1)
        ax.set_xlabel("fine-tune accuracy (%)")
        ax.set_ylabel("harmful refusal, mean of 5 languages (%)")
        ax.set_title(f"fine-tuning-as-a-service, attack language {lang}")
        ax.set_xlim(-5, 105)
        ax.set_ylim(-5, 105)
    fig.tight_layout()
    save_figure(fig, path)


def per_language_plot(metrics: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [t for t in metrics["table"] if t["threat"] == "harmful"]
    langs = metrics["langs"]
    atk = sorted({t["attack_lang"] for t in rows})
    if not rows:
        return
    fig, axes = plt.subplots(1, len(atk), figsize=(5 * len(atk), 0.35 * len(rows) / max(1, len(atk)) + 2), squeeze=False)
    for ax, lang in zip(axes[0], atk):
        rs = [t for t in rows if t["attack_lang"] == lang]
        data = [[(t["harmful"][l] or {}).get("mean", float("nan")) * 100 for l in langs] for t in rs]
        im = ax.imshow(data, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(langs)), langs)
        ax.set_yticks(range(len(rs)), [t["defense"] for t in rs])
        for i, row in enumerate(data):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7)
        ax.set_title(f"harmful attack in {lang}: harmful refusal % by eval language")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    save_figure(fig, path, bbox_inches="tight")


def write_report(out_dir: Path, metrics: dict) -> None:
    from lab.data import atomic_write_text

    out_dir = Path(out_dir)
    pareto_plot(metrics, out_dir / "pareto.png")
    per_language_plot(metrics, out_dir / "per_language.png")
    langs = metrics["langs"]
    L = [f"# Defense bench: {metrics.get('recipe', '')}", "",
         "Mean over seeds ± half-width of the 95 % t-interval. Harmful / benign refusal and FA in %; "
         "`worst` = the lowest mean harmful refusal over the attacker grid (threat harmful, first seed); "
         "extra s / MiB against the undefended fine-tune of the same cell (post-fine-tuning defenses: their "
         "own processing; alignment-stage defenses: see the variants table for the one-off build).", "",
         "| defense | stage | threat | attack | " + " | ".join(f"harmful {l}" for l in langs)
         + " | harmful mean | benign mean | FA | worst | extra s | extra MiB |",
         "|" + "---|" * (10 + len(langs))]
    for t in metrics["table"]:
        w = t["worst_case"]
        L.append(f"| {t['defense']} | {t['stage']} | {t['threat']} | {t['attack_lang']} | "
                 + " | ".join(_f(t["harmful"][l]) for l in langs)
                 + f" | {_f(t['harmful_mean'])} | {_f(t['benign_mean'])} | {_f(t['fa'])} | "
                 + (f"{w['harmful_mean'] * 100:.0f} (lr {w['lr']:g}, ep {w['epochs']})" if w else "—")
                 + f" | {_f(t['extra_seconds'], False, 1)} | {_f(t['extra_peak_mib'], False, 0)} |")
    L += ["", "![Pareto: harmful refusal vs fine-tune accuracy](pareto.png)", "",
          "Per-language view (does a defense protect only the attack's language?):", "",
          "![harmful refusal per evaluation language](per_language.png)", ""]
    if metrics.get("variants"):
        L += ["## Alignment-stage variants (before any attack)", "",
              "| variant | " + " | ".join(f"harmful {l}" for l in langs) + " | benign mean | build s | peak MiB |",
              "|" + "---|" * (4 + len(langs))]
        for d, v in metrics["variants"].items():
            m = v["metrics"]
            L.append(f"| {d} | " + " | ".join(f"{m[l]['harmful_refusal'] * 100:.0f}" for l in langs if l in m)
                     + f" | {_mean([m[l]['benign_refusal'] for l in langs if l in m]) * 100:.0f} | {v['build_seconds']}"
                     + f" | {v['peak_mib'] if v['peak_mib'] is None else round(v['peak_mib'])} |")
    if metrics.get("p_sweep"):
        L += ["", "## Harmful ratio p, no defense (first seed)", "", "| attack | p | harmful mean | FA |", "|---|---|---|---|"]
        for lang, ps in metrics["p_sweep"].items():
            for p, v in sorted(ps.items(), key=lambda kv: float(kv[0])):
                L.append(f"| {lang} | {p} | {v['harmful_mean'] * 100:.0f} | {v['fa'] * 100:.0f} |")
    if metrics.get("diverged"):
        L += ["", "Diverged (no result): " + ", ".join(metrics["diverged"])]
    atomic_write_text(out_dir / "report.md", "\n".join(L) + "\n")
