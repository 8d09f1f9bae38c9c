"""The sweep summary: summary.json, summary.md and transfer_heatmap.png from the cells' metrics.json.

Everything is read from what the runner wrote: ``models`` (per state and language), ``transfer``
(drop per fine-tuned state and language), ``finetunes`` (what each state was fine-tuned on),
``config_hash`` and ``timings``.  Nothing is guessed from the recipe.

Replicates are the cells of a group (cells equal but for ``seed``) and, within a cell, the states
of one fine-tune repeated over ``seeds:``.  A rate's CI is the Student-t interval over replicates;
a single replicate shows its Wilson interval over prompts (``<metric>_ci`` in metrics.json).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from lab.stats import mean_ci
from lab.sweep.cells import Cell, Store, cell_slug
from lab.sweep.spec import SweepSpec, canon

__all__ = ["aggregate", "summary_markdown", "is_rate", "is_count"]

_CONDITION_KEYS = ("lang", "data")  # what a fine-tune's row label already says


def is_count(key: str) -> bool:
    return key.startswith(("n_", "k_")) or key == "truncated"


def is_rate(key: str) -> bool:
    return key.endswith("_refusal") or "_refusal_heldout_" in key


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _state_key(state: str, finetunes: dict) -> str:
    """A fine-tuned state without its seed suffix (the runner's base_state): seeds are replicates."""
    ft = finetunes.get(state)
    return str(ft.get("base_state") or state) if isinstance(ft, dict) else state


def _condition(state: str, finetunes: dict) -> str:
    ft = finetunes.get(state) if isinstance(finetunes.get(state), dict) else {}
    lang, data = ft.get("lang"), ft.get("data")
    if lang is None:
        return _state_key(state, finetunes)
    return str(lang) if data in (None, "harmful") else f"{lang} ({data})"


def _stat(values: list[float], wilson: list | None = None) -> dict:
    s = mean_ci(values)
    s["ci_method"] = "t" if s["ci95"] is not None else None
    if s["ci95"] is None and wilson is not None and len(wilson) == 2 and all(_number(x) for x in wilson):
        s["ci95"], s["ci_method"] = [float(wilson[0]), float(wilson[1])], "wilson"
    return s


def _groups(rows: list[tuple[Cell, Path, dict]]) -> list[dict]:
    groups: dict[str, dict] = {}
    for c, _, m in rows:
        g = groups.setdefault(canon(c.group_flat), {
            "params": c.group_flat, "label": cell_slug(c.group_flat) if c.group_flat else "all",
            "cells": [], "seeds": [], "_vals": {}, "_ci": {}})
        g["cells"].append(c.id)
        g["seeds"].append(c.flat.get("seed", c.config.get("seed")))
        fts = m.get("finetunes") if isinstance(m.get("finetunes"), dict) else {}
        for state, langs in (m.get("models") or {}).items():
            if not isinstance(langs, dict):
                continue
            skey = _state_key(state, fts)
            for lang, mets in langs.items():
                if not isinstance(mets, dict):
                    continue
                for k, v in mets.items():
                    if _number(v):
                        g["_vals"].setdefault(skey, {}).setdefault(lang, {}).setdefault(k, []).append(v)
                        g["_ci"].setdefault(skey, {}).setdefault(lang, {})[k] = mets.get(f"{k}_ci")
    out = []
    for g in groups.values():
        vals, cis = g.pop("_vals"), g.pop("_ci")
        g["n"] = len(g["cells"])
        g["metrics"] = {s: {l: {k: (_stat(vs) if is_count(k) else _stat(vs, cis[s][l].get(k)))
                                for k, vs in ms.items()} for l, ms in langs.items()}
                        for s, langs in vals.items()}
        out.append(g)
    return out


def _transfer(rows: list[tuple[Cell, Path, dict]]) -> dict | None:
    """Rows: fine-tune condition (plus the sweep's other parameters that vary), columns: evaluation language."""
    drops: dict[str, dict[str, list[float]]] = {}
    cols: list[str] = []
    metric = baseline = None
    seen: dict[str, set[str]] = {}
    for c, _, _ in rows:
        for k, v in c.group_flat.items():
            seen.setdefault(k, set()).add(canon(v))
    varying = {k for k, vs in seen.items() if len(vs) > 1 and k.split(".")[-1] not in _CONDITION_KEYS}
    for c, _, m in rows:
        tr = m.get("transfer")
        if not isinstance(tr, dict) or not isinstance(tr.get("rows"), dict):
            continue
        metric, baseline = tr.get("metric", "harmful_refusal"), tr.get("baseline", "aligned")
        fts = m.get("finetunes") if isinstance(m.get("finetunes"), dict) else {}
        other = {k: v for k, v in c.group_flat.items() if k in varying}  # what tells the rows apart
        for state, row in tr["rows"].items():
            if not isinstance(row, dict):
                continue
            label = _condition(state, fts) + (f" · {cell_slug(other)}" if other else "")
            for lang in tr.get("langs") or list(row):
                if lang not in cols:
                    cols.append(lang)
                if _number(row.get(lang)):
                    drops.setdefault(label, {}).setdefault(lang, []).append(row[lang])
    if not drops:
        return None
    labels = list(drops)
    stats = [[mean_ci(drops[r][l]) if drops[r].get(l) else None for l in cols] for r in labels]
    return {"metric": f"{metric} drop ({baseline} - fine-tuned)", "baseline": baseline, "rows": labels, "cols": cols,
            "drop": [[None if s is None else s["mean"] for s in r] for r in stats],
            "ci95": [[None if s is None else s["ci95"] for s in r] for r in stats],
            "n": [[0 if s is None else s["n"] for s in r] for r in stats],
            "heatmap": "transfer_heatmap.png"}


def aggregate(spec: SweepSpec, cells: list[Cell], store: Store, out: Path) -> dict:
    """Write OUT/summary.json, OUT/summary.md and OUT/transfer_heatmap.png for the finished cells."""
    from lab.data import atomic_write_text
    from lab.errors import LabError

    out.mkdir(parents=True, exist_ok=True)
    rows, missing = [], []
    for c in cells:
        d = store.done_dir(c.id)
        if d is None:
            missing.append(c.dirname)
            continue
        try:
            rows.append((c, d, json.loads((d / "metrics.json").read_text(encoding="utf-8"))))
        except ValueError as e:
            raise LabError(f"{d / 'metrics.json'}: not valid JSON ({e}); remove the cell dir to rerun it") from None
    transfer = _transfer(rows)
    if transfer:
        from lab.report import heatmap

        heatmap(transfer["rows"], transfer["cols"], [[None if v is None else 100 * v for v in r] for r in transfer["drop"]],
                out / "transfer_heatmap.png", title=f"{spec.name}: refusal drop vs {transfer['baseline']}",
                ylabel="fine-tune", label=f"harmful-refusal drop vs {transfer['baseline']} (points)")
    summary = {
        "sweep": spec.name, "file": str(spec.path), "recipe": spec.recipe_arg, "method": spec.method,
        "n_cells": len(cells), "n_done": len(rows), "missing": missing,
        "cells": [{"id": c.id, "dir": os.path.relpath(d, out), "params": c.params, "overrides": c.flat,
                   "config_hash": m.get("config_hash"), "wall_seconds": (m.get("timings") or {}).get("wall_seconds")}
                  for c, d, m in rows],
        "groups": _groups(rows),
        "transfer": transfer,
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str, ensure_ascii=False))
    atomic_write_text(out / "summary.md", summary_markdown(summary))
    return summary


def _fmt(key: str, s: dict | None) -> str:
    if not s:
        return ""
    if is_count(key):
        lo, hi = min(s["values"]), max(s["values"])
        return f"{lo:g}" if lo == hi else f"{lo:g}–{hi:g}"
    scale, unit, digits = (100.0, " %", 1) if is_rate(key) else (1.0, "", 3)
    text = f"{scale * s['mean']:.{digits}f}{unit}"
    if s.get("ci95"):
        lo, hi = s["ci95"]
        text += f" [{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"
    return text


def summary_markdown(s: dict) -> str:
    out = [f"# Sweep `{s['sweep']}`", "",
           f"Recipe `{s['recipe']}` · method {s['method']} · {s['n_done']}/{s['n_cells']} cells done"
           + (f" · **missing: {len(s['missing'])}**" if s["missing"] else ""), ""]
    t = s.get("transfer")
    if t:
        out += ["## Transfer", "",
                f"{t['metric']} in points, mean over replicates with the 95 % t-interval "
                "(none for a single replicate); rows: fine-tune, columns: evaluation language.", "",
                f"![transfer heatmap]({t['heatmap']})", "",
                "| fine-tune \\ eval | " + " | ".join(t["cols"]) + " |", "|---|" + "---|" * len(t["cols"])]
        for r, vals, cis, ns in zip(t["rows"], t["drop"], t["ci95"], t["n"]):
            cells = []
            for v, ci, n in zip(vals, cis, ns):
                cells.append("" if v is None else f"{100 * v:+.1f}" + (f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"
                                                                       if ci else "") + f" (n={n})")
            out.append(f"| {r} | " + " | ".join(cells) + " |")
        out.append("")
    out += ["## Cell groups", "",
            "Rates in %: mean over replicates [95 % t-interval]; with one replicate, its rate [95 % Wilson "
            "interval over prompts]. Counts are per replicate (a range when they differ).", ""]
    for g in s["groups"]:
        out += [f"### {g['label']}", "", f"n = {g['n']} (seeds: {', '.join(str(x) for x in g['seeds'])})", ""]
        names: list[str] = []
        for langs in g["metrics"].values():
            for mets in langs.values():
                names += [k for k in mets if k not in names]
        first = [k for k in ("harmful_refusal", "benign_refusal", "n_harmful", "n_benign") if k in names]
        names = first + sorted(k for k in names if k not in first)
        out += ["| state | lang | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for state, langs in g["metrics"].items():
            for lang, mets in langs.items():
                out.append(f"| {state} | {lang} | " + " | ".join(_fmt(k, mets.get(k)) for k in names) + " |")
        out.append("")
    out += ["## Cells", ""] + [f"- [`{Path(c['dir']).name}`]({c['dir']})" for c in s["cells"]]
    if s["missing"]:
        out += ["", "Missing (failed or not run yet): " + ", ".join(f"`{m}`" for m in s["missing"])]
    return "\n".join(out) + "\n"
