"""Markdown report and transfer heatmap, read from a run's metrics (never from live objects)."""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

from lab.metrics import t_interval


def _pct(x) -> str:
    return "—" if x is None or x != x else f"{100 * x:.0f}"


def _ci(m: dict, key: str) -> str:
    lo, hi = m.get(f"{key}_ci") or [None, None]
    return f"{_pct(m[key])} [{_pct(lo)}–{_pct(hi)}]"


def seed_groups(metrics: dict) -> dict[str, list[str]]:
    """Fine-tuned states grouped over seeds (a recipe without `seeds` gives groups of one)."""
    groups = defaultdict(list)
    for name, ft in (metrics.get("finetunes") or {}).items():
        groups[ft["base_state"]].append(name)
    return dict(groups)


def grouped_drop(metrics: dict) -> tuple[list[str], list[str], dict]:
    """(rows, langs, {row: {lang: (mean, lo, hi)}}) of the harmful-refusal drop vs aligned, over seeds."""
    models = metrics["models"]
    b = metrics.get("baseline", "aligned")
    langs = list(models[b])
    out = {}
    for g, states in seed_groups(metrics).items():
        out[g] = {l: t_interval([models[b][l]["harmful_refusal"] - models[s][l]["harmful_refusal"] for s in states])
                  for l in langs}
    return list(out), langs, out


def heatmap(rows: list[str], cols: list[str], points: list[list[float | None]], path: Path, *, title: str,
            ylabel: str, label: str) -> None:
    """Attack language x evaluation language heatmap of refusal drops in points (None = no data),
    diverging around 0 (a negative drop = refusal went up). Written atomically. One drawing for run
    reports (transfer.png) and sweep summaries (transfer_heatmap.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [[float("nan") if v is None else v for v in r] for r in points]
    vmax = max([abs(v) for r in data for v in r if v == v] + [5.0])
    fig, ax = plt.subplots(figsize=(1.1 * len(cols) + 2.5, 0.6 * len(rows) + 1.8))
    im = ax.imshow(data, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("evaluation language")
    ax.set_ylabel(ylabel)
    for i, r in enumerate(data):
        for j, v in enumerate(r):
            if v == v:
                ax.text(j, i, f"{v:+.0f}", ha="center", va="center", fontsize=9,
                        color="white" if abs(v) > 0.6 * vmax else "black")
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig, path, **kw) -> None:
    """Write a matplotlib figure as PNG through a per-process temp file + rename (readers never see half
    a file), then close it. The one figure writer of every report."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        fig.savefig(tmp, dpi=110, format="png", **kw)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def plot_transfer(metrics: dict, path: Path) -> None:
    rows, langs, vals = grouped_drop(metrics)
    if rows:
        heatmap(rows, langs, [[100 * vals[r][l][0] for l in langs] for r in rows], path,
                title=f"{metrics.get('recipe', '')}: refusal drop", ylabel="fine-tune (attack language)",
                label="harmful-refusal drop vs aligned (points)")


def refusal_table(models: dict, langs: list[str]) -> str:
    """Markdown: one row per state; per language harmful refusal % [95 % Wilson CI] and benign refusal %."""
    head = "| state | " + " | ".join(f"{l} harmful | {l} benign" for l in langs) + " |"
    lines = [head, "|---" * (1 + 2 * len(langs)) + "|"]
    for state, per in models.items():
        cells = []
        for l in langs:
            m = per.get(l)
            cells += [_ci(m, "harmful_refusal"), _ci(m, "benign_refusal")] if m else ["—", "—"]
        lines.append(f"| {state} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _margin(x) -> str:
    return "—" if x is None or x != x else f"{x:+.2f}"


def render_markdown(metrics: dict) -> str:
    models = metrics["models"]
    b = metrics.get("baseline", "aligned")
    langs = list(models[b])
    L = [f"# Run report: {metrics.get('recipe')}", "",
         f"Model: `{metrics.get('model')}` · config hash `{metrics.get('config_hash')}` · "
         f"wall time {metrics.get('timings', {}).get('wall_seconds', '?')} s", "",
         "Refusal rates in % with 95 % Wilson intervals; n = prompts per language. Harmful refusal should be "
         "high, benign refusal (over-refusal) low.", ""]
    L += ["## Refusal per model state and language", "",
          "| state | " + " | ".join(f"{l} harmful" for l in langs) + " | " + " | ".join(f"{l} benign" for l in langs) + " |",
          "|---" * (1 + 2 * len(langs)) + "|"]
    for s, m in models.items():
        L.append(f"| {s} | " + " | ".join(_ci(m[l], "harmful_refusal") if l in m else "—" for l in langs) + " | "
                 + " | ".join(_ci(m[l], "benign_refusal") if l in m else "—" for l in langs) + " |")
    a = models[b]
    L += ["", f"n per language: harmful {a[langs[0]]['n_harmful']}, benign {a[langs[0]]['n_benign']}.", ""]
    rows, _, vals = grouped_drop(metrics)
    if rows:
        n_seeds = {g: len(v) for g, v in seed_groups(metrics).items()}
        L += ["## Transfer matrix: harmful-refusal drop vs aligned (points)", "",
              f"Drop vs `{b}`. Rows: fine-tune (attack language); columns: evaluation language. "
              + ("Mean over seeds with 95 % t-interval." if max(n_seeds.values()) > 1 else "Single seed."), "",
              "| fine-tune | seeds | " + " | ".join(langs) + " |", "|---|---" + "|---" * len(langs) + "|"]
        for r in rows:
            cells = []
            for l in langs:
                m, lo, hi = vals[r][l]
                cells.append(f"{100 * m:.0f}" + (f" [{100 * lo:.0f}, {100 * hi:.0f}]" if n_seeds[r] > 1 else ""))
            L.append(f"| {r} | {n_seeds[r]} | " + " | ".join(cells) + " |")
        L += ["", "![transfer](transfer.png)", ""]
    for kind in ("harmful", "benign"):
        L += [f"## Held-out breakdown ({kind} refusal %): unseen phrasing / unseen topic", "",
              "| state | " + " | ".join(f"{l} phrasing / topic" for l in langs) + " |", "|---" * (1 + len(langs)) + "|"]
        for s, m in models.items():
            L.append(f"| {s} | " + " | ".join(
                f"{_pct(m[l].get(f'{kind}_refusal_heldout_phrasing'))} / {_pct(m[l].get(f'{kind}_refusal_heldout_topic'))}"
                if l in m else "—" for l in langs) + " |")
        L.append("")
    if any("refusal_margin" in m[l] for m in models.values() for l in m):
        L += ["", "## Log-prob refusal margin (harmful prompts; > 0 prefers refusing)", "",
              "| state | " + " | ".join(langs) + " |", "|---" * (1 + len(langs)) + "|"]
        for s, m in models.items():
            L.append(f"| {s} | " + " | ".join(_margin(m[l].get("refusal_margin")) if l in m else "—" for l in langs) + " |")
    lh = metrics.get("loophole", {})
    if lh:
        L += ["", "## Loophole rate (prompt refused in English, parallel prompt answered in X), %", "",
              "| state | " + " | ".join(f"en→{l}" for l in langs if l != "en") + " |", "|---" * len(langs) + "|"]
        for s, d in lh.items():
            L.append(f"| {s} | " + " | ".join(_pct(d.get(f"en->{l}")) for l in langs if l != "en") + " |")
    judges = metrics.get("judges") or {}
    if judges:
        L += ["", "## The same answers under other detectors (harmful refusal %, Cohen's kappa vs the first)", "",
              "| state | detector | " + " | ".join(langs) + " | kappa | disagreements |", "|---" * (4 + len(langs)) + "|"]
        for s, per in judges.items():
            for det, j in per.items():
                kappa = next((v for k, v in j.items() if k.startswith("kappa_vs_")), None)
                L.append(f"| {s} | {det} | " + " | ".join(_pct(j["metrics"].get(l, {}).get("harmful_refusal")) for l in langs)
                         + f" | {'—' if kappa is None else f'{kappa:.2f}'} | {j['disagreements']} |")
    diverged = metrics.get("diverged") or {}
    if diverged:
        L += ["", "## Diverged fine-tunes (no result recorded)", ""] + [f"- `{s}`: {m}" for s, m in diverged.items()]
    trunc = {s: sum(m[l].get("truncated", 0) for l in m) for s, m in models.items()}
    if any(trunc.values()):
        L += ["", "Truncated answers (no end of turn within max_new_tokens): "
              + ", ".join(f"{s}: {n}" for s, n in trunc.items() if n), ""]
    return "\n".join(L) + "\n"


def write_report(out_dir: Path, metrics: dict) -> None:
    out_dir = Path(out_dir)
    plot_transfer(metrics, out_dir / "transfer.png")
    tmp = out_dir / f"report.md.tmp{os.getpid()}"
    tmp.write_text(render_markdown(metrics), encoding="utf-8")
    os.replace(tmp, out_dir / "report.md")


def report_from_dir(run_dir: Path) -> str:
    from lab.errors import LabError

    path = Path(run_dir) / "metrics.json"
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LabError(f"{path}: cannot read the run's metrics ({str(e)[:200]})") from None
    if not isinstance(metrics, dict) or "models" not in metrics:
        raise LabError(f"{path}: not a lab metrics.json (no 'models' key)")
    if metrics.get("kind", "transfer") != "transfer":
        raise LabError(f"{path}: `lab report` re-renders transfer runs; a {metrics['kind']} run's report.md is final")
    write_report(Path(run_dir), metrics)
    return str(Path(run_dir) / "report.md")
