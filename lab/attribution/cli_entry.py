"""`lab attribute`: scores and masks for one model, per language and for all languages together.

lab/cli.py (lead) wires this as

    lab attribute --model M --method snip|snip-pooled|wanda|random|actsvd --data safety|utility
                  --langs en,ja,... --out DIR --q 5 [--p 5] [--scope per-matrix|per-row|global]
                  [--n-examples 64] [--dry-run] [--save-scores]

`--method actsvd` (lab/attribution/actsvd.py) makes low-rank subspaces instead of masks: --q is the
rank of the safety subspace in percent of min(d_out, d_in) per layer, --p (optional) that of the
utility subspace for the orthogonal variant (I − Π_u) Π_s; --scope does not apply. Outputs:
    subspaces/actsvd-{data}-{lang}.safetensors (+ actsvd-utility-{lang} with --p)   V (d_out x r) per layer
    overlap.json, overlap.md   per-language subspace overlap ‖V_aᵀV_b‖²/r vs a random subspace
    summary.json

Outputs in OUT (masks):
    masks/{method}-{data}-{lang}.safetensors + .json   one per language and "all" (bool per parameter)
    scores/{method}-{data}-{lang}.safetensors + .json  with --save-scores (and scores/...-utility-... with --p)
    overlap.json, overlap.md                           per-language Jaccard vs equal-size random masks
    heatmap-{lang}.png                                 layer x module density of each mask
    summary.json
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from lab.errors import LabError

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def _langs(langs) -> list[str]:
    from lab.data import LANGS

    if not langs or list(langs) == ["all"]:
        return list(LANGS)
    out = []
    for l in langs:
        out += [x.strip() for x in str(l).split(",") if x.strip()]
    bad = [l for l in out if l not in LANGS]
    if bad:
        raise LabError(f"--langs: unknown language(s) {bad}; expected some of {', '.join(LANGS)}")
    return out


def load_calibration_records(data: str, langs: list[str], n_examples: int | None,
                             data_dir: Path | None = None) -> dict[str, list[dict]]:
    """{lang: first n_examples records of datasets/splits/{data}-{lang}.jsonl}."""
    from lab.data import SPLITS_DIR, read_jsonl

    d = Path(data_dir) if data_dir else SPLITS_DIR
    out = {}
    for lang in langs:
        recs = read_jsonl(d / f"{data}-{lang}.jsonl")
        for i, r in enumerate(recs):
            if not isinstance(r.get("prompt"), str) or not isinstance(r.get("response"), str):
                raise LabError(f"{d / f'{data}-{lang}.jsonl'}:{i + 1}: record needs string 'prompt' and 'response'")
        out[lang] = recs[:n_examples] if n_examples else recs
    return out


def available_memory() -> tuple[int, str]:
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory, "GPU 0 total"
    import psutil

    return psutil.virtual_memory().available, "RAM available"


def attribute_main(model: str, method: str, data: str, langs: list[str], out: Path, q: float,
                   p: float | None = None, scope: str = "per-matrix", n_examples: int = 64, dry_run: bool = False,
                   save_scores: bool = False, *, layers_per_pass: int | None = None, score_dtype: str = "float32",
                   batch_size: int = 8, max_length: int = 256, include_embeddings: bool = False,
                   include_lm_head: bool = False, seed: int = 0, data_dir: Path | None = None,
                   trust_remote_code: bool = False, log=print) -> int:
    """Compute importance scores and masks; returns an exit code (0 ok, 2 bad input)."""
    try:
        return _attribute(model, method, data, langs, Path(out), q, p, scope, n_examples, dry_run, save_scores,
                          layers_per_pass, score_dtype, batch_size, max_length, include_embeddings,
                          include_lm_head, seed, data_dir, trust_remote_code, log)
    except LabError as e:
        log(f"error: {e}")
        return 2


def _attribute(model_spec, method, data, langs, out, q, p, scope, n_examples, dry_run, save_scores,
               layers_per_pass, score_dtype, batch_size, max_length, include_embeddings, include_lm_head,
               seed, data_dir, trust_remote_code, log) -> int:
    from lab.attribution import analysis, masks, scores
    from lab.attribution.memory import estimate_peak

    methods = scores.METHODS + ("actsvd",)
    if method not in methods:
        raise LabError(f"--method must be one of {', '.join(methods)}, got {method!r}")
    if data not in ("safety", "utility"):
        raise LabError(f"--data must be 'safety' or 'utility', got {data!r}")
    if scope not in masks.SCOPES:
        raise LabError(f"--scope must be one of {', '.join(masks.SCOPES)}, got {scope!r}")
    masks._check_pct(q, "--q")
    if p is not None:
        masks._check_pct(p, "--p")
    if score_dtype not in _DTYPES:
        raise LabError(f"--score-dtype must be float32 or bfloat16, got {score_dtype!r}")
    sd = _DTYPES[score_dtype]
    langs = _langs(langs)

    est = estimate_peak(model_spec, method, batch_size=batch_size, seq_len=max_length,
                        layers_per_pass=layers_per_pass, score_dtype=sd, include_embeddings=include_embeddings,
                        include_lm_head=include_lm_head)
    avail, what = available_memory()
    log(f"[attribute] estimated peak memory for {model_spec} (batch {batch_size} x {max_length} tokens):")
    for line in est.lines():
        log("  " + line)
    if p is not None and method != "random":
        log("  (utility scores for --p are computed after the safety scores; the peak is the same)")
    log(f"  {what}: {avail / 2**30:.1f} GiB")
    if est.peak > avail:
        log("  warning: the estimate exceeds available memory; try --layers-per-pass 4 --score-dtype bfloat16 "
            "and a smaller --batch-size")
    if dry_run:
        return 0

    from lab.models import load_model

    t0 = time.time()
    recs = {} if method == "random" else load_calibration_records(data, langs, n_examples, data_dir)
    urecs = (load_calibration_records("utility", langs, n_examples, data_dir)
             if p is not None and method != "random" else {})
    model, tok = load_model(model_spec, trust_remote_code=trust_remote_code)
    dev = next(model.parameters()).device
    groups = {lang: [lang] for lang in langs}
    if len(langs) > 1:
        groups["all"] = langs
    if method == "actsvd":
        return _actsvd(model, tok, recs, urecs, groups, langs, out, q, p, model_spec, data, n_examples,
                       batch_size, max_length, dev, t0, log)
    kw = dict(include_embeddings=include_embeddings, include_lm_head=include_lm_head,
              layers_per_pass=layers_per_pass, score_dtype=sd)

    def score(records_by_lang, group_langs, label, salt):
        if method == "random":
            return scores.compute_scores(model, "random", seed=seed + salt, **kw)
        batches = scores.build_balanced_calibration(tok, {l: records_by_lang[l] for l in group_langs},
                                                    batch_size=batch_size, max_length=max_length, device=dev)
        n_rec = sum(len(records_by_lang[l]) for l in group_langs)
        log(f"  {method} on {label}: {n_rec} examples, {scores.n_loss_tokens(batches)} response tokens"
            + (" (languages weighted equally)" if len(group_langs) > 1 else ""))
        return scores.compute_scores(model, method, batches, seed=seed, **kw)

    mask_by_group, summary = {}, {"model": model_spec, "method": method, "data": data, "q": q, "p": p,
                                  "scope": scope, "n_examples": n_examples, "masks": {}}
    for gi, (label, group_langs) in enumerate(groups.items()):
        s = score(recs, group_langs, f"{data}-{label}", gi)
        u = score(urecs, group_langs, f"utility-{label}", 100 + gi) if urecs else None
        meta = {"model": model_spec, "method": method, "data": data, "langs": group_langs, "q": q, "p": p,
                "scope": scope, "n_examples": n_examples, "score_dtype": score_dtype}
        if save_scores:
            masks.save_scores(s, out / "scores" / f"{method}-{data}-{label}", meta)
            if u is not None:
                masks.save_scores(u, out / "scores" / f"{method}-utility-{label}", {**meta, "data": "utility"})
        m = masks.set_difference_mask(s, u, q, p, scope)
        del s, u
        path = masks.save_mask(m, out / "masks" / f"{method}-{data}-{label}", meta)
        analysis.heatmap(m, out / f"heatmap-{label}.png", title=f"{method} {data} {label}: q={q}%"
                         + (f" minus utility p={p}%" if p is not None else ""))
        frac = masks.mask_fraction(m)
        summary["masks"][label] = {"path": str(path), "fraction": frac}
        log(f"  mask {label}: {100 * frac:.2f}% of scored weights -> {path}")
        mask_by_group[label] = m
    per_lang = {l: mask_by_group[l] for l in langs}
    if len(per_lang) > 1:
        rows = analysis.overlap_table(per_lang, seed=seed)
        (out / "overlap.json").write_text(json.dumps(rows, indent=1) + "\n")
        md = analysis.overlap_matrix_markdown(per_lang, rows)
        (out / "overlap.md").write_text(md + "\n")
        summary["overlap"] = rows
        log(md)
    summary["seconds"] = round(time.time() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    log(f"[attribute] done in {summary['seconds']} s -> {out}")
    return 0


def _actsvd(model, tok, recs, urecs, groups, langs, out, q, p, model_spec, data, n_examples, batch_size,
            max_length, dev, t0, log) -> int:
    from lab.attribution import actsvd, masks, scores

    summary = {"model": model_spec, "method": "actsvd", "data": data, "q": q, "p": p, "n_examples": n_examples,
               "rank": "percent of min(d_out, d_in) per layer", "subspaces": {}}
    by_group = {}
    for label, group_langs in groups.items():
        for kind, rs, rank in ((data, recs, q), ("utility", urecs, p)):
            if not rs:
                continue
            batches = scores.build_balanced_calibration(tok, {l: rs[l] for l in group_langs}, batch_size=batch_size,
                                                        max_length=max_length, device=dev)
            V = actsvd.actsvd_subspaces(model, batches, float(rank) / 100.0)
            meta = {"model": model_spec, "method": "actsvd", "data": kind, "langs": group_langs, "rank_pct": rank,
                    "ranks": {n: v.shape[1] for n, v in V.items()}}
            path = masks._save(V, out / "subspaces" / f"actsvd-{kind}-{label}", {**meta, "kind": "subspaces"})
            summary["subspaces"][f"{kind}-{label}"] = {"path": str(path), "total_rank": sum(meta["ranks"].values())}
            log(f"  actsvd {kind} {label}: rank {rank}% per layer ({sum(meta['ranks'].values())} directions) -> {path}")
            if kind == data:
                by_group[label] = V
    if len(langs) > 1:
        rows = []
        for i, a in enumerate(langs):
            for b in langs[i + 1:]:
                rows.append({"a": a, "b": b, **actsvd.subspace_overlap(by_group[a], by_group[b])})
        (out / "overlap.json").write_text(json.dumps(rows, indent=1) + "\n")
        md = ["| a | b | overlap | random |", "|---|---|---|---|"]
        md += [f"| {r['a']} | {r['b']} | {r['overlap']:.3f} | {r['random']:.3f} |" for r in rows]
        (out / "overlap.md").write_text("\n".join(md) + "\n")
        summary["overlap"] = rows
        log("\n".join(md))
    summary["seconds"] = round(time.time() - t0, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    log(f"[attribute] done in {summary['seconds']} s -> {out}")
    return 0
