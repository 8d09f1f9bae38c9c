"""Public benchmarks and fine-tuning sets in the lab's record schemas.

Evaluation (`eval.data`, `lab eval --data`), `load_eval_source(spec, langs, limit)`:
  datasets/splits/eval.jsonl     the lab's own evaluation JSONL (lab.data.load_eval)
  multijail | xsafety | polyrefuse | advbench | mt-bench
                                 a local copy under $LAB_DATA_DIR (laid out as upstream publishes it),
                                 else the hub copy where there is one (datasets cache, HF_HUB_OFFLINE)
  NAME:PATH                      that benchmark from a local file / folder
  NAME@SEL[:PATH]                a subset: polyrefuse@val, xsafety@Insult,Crimes_And_Illegal_Activities
  hub:ORG/ID[@split]             any hub dataset with a prompt column (+ optional lang, kind, pid, topic)
  PATH                           a local copy in any of the formats above, recognised by its shape
  A+B                            several sources together, e.g. multijail+mt-bench (harmful + benign)

Fine-tuning (`load_finetune_source(spec, n)`): see lab.public_data.finetune.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from lab import REPO_ROOT
from lab.data import LANGS, EvalPrompt, read_jsonl
from lab.errors import LabError
from lab.public_data.benchmarks import BENCHMARKS, HUB, LOCAL, record, slug
from lab.public_data.finetune import load_finetune_source  # noqa: F401  (public API)
from lab.public_data.io import hub_rows, text_field

__all__ = ["BENCHMARKS", "load_eval_source", "load_finetune_source", "data_dirs", "coverage_table"]


def data_dirs() -> list[Path]:
    """Where benchmark names look for local copies: $LAB_DATA_DIR (os.pathsep-separated), then the
    lab's development machines' ../shared/data/prompts."""
    dirs = [Path(p).expanduser() for p in os.environ.get("LAB_DATA_DIR", "").split(os.pathsep) if p.strip()]
    dirs.append(Path(REPO_ROOT).parent / "shared" / "data" / "prompts")
    return dirs


def _local(p: str) -> Path:
    """A relative path resolves against the working directory, then the lab's checkout."""
    path = Path(p).expanduser()
    if path.is_absolute() or path.exists() or not (Path(REPO_ROOT) / p).exists():
        return path
    return Path(REPO_ROOT) / p


def detect(path: Path) -> str | None:
    """Which benchmark a local file / folder is, from its shape (None: not recognised)."""
    if path.is_dir():
        if any(path.glob("harmful_*_translated_*.json")):
            return "polyrefuse"
        if any(path.glob("mt_bench_*_question.jsonl")):
            return "mt-bench"
        if (path / "en").is_dir() and any((path / "en").glob("*.csv")):
            return "xsafety"
        return None
    if path.suffix.lower() == ".csv":
        head = path.read_text(encoding="utf-8-sig", errors="replace").split("\n", 1)[0].lower()
        cols = [c.strip() for c in head.split(",")]
        if "goal" in cols:
            return "advbench"
        if {"id", "tags", "en"} <= set(cols):
            return "multijail"
    if path.name.startswith("mt_bench_") and path.suffix == ".jsonl":
        return "mt-bench"
    return None


def _named(name: str, sel: str | None, path: str | None, langs: list[str]) -> list[EvalPrompt]:
    bench = BENCHMARKS[name]
    missing = [l for l in langs if l not in bench.langs]
    use = [l for l in langs if l in bench.langs]
    if not use:
        raise LabError(f"eval data '{name}': covers {', '.join(bench.langs)}, none of the requested languages "
                       f"{', '.join(langs)} (see the language coverage table in the README)")
    if path is not None:
        p = _local(path)
        if not p.exists():
            raise LabError(f"eval data '{name}:{path}': {p} does not exist")
        return LOCAL[name](p, use, sel)
    for d in data_dirs():
        if (d / bench.local).exists():
            return LOCAL[name](d / bench.local, use, sel)
    if name in HUB and not sel:
        hub_use = [l for l in use if l in bench.hub_langs]
        if hub_use != use:
            raise LabError(f"eval data '{name}': the hub copy ({bench.hub}) has only {', '.join(bench.hub_langs)}; "
                           f"for {', '.join(l for l in use if l not in hub_use)} get {bench.upstream} and pass "
                           f"'{name}:PATH' or set LAB_DATA_DIR")
        return HUB[name](hub_use, sel)
    raise LabError(f"eval data '{name}': no local copy found (looked for '{bench.local}' in "
                   f"{', '.join(map(str, data_dirs()))})" + ("" if name in HUB else " and it has no hub copy")
                   + f"; get it from {bench.upstream} and pass '{name}:PATH' or set LAB_DATA_DIR")


def _generic_hub(ident: str, langs: list[str]) -> list[EvalPrompt]:
    ds_id, _, split = ident.partition("@")
    for name, bench in BENCHMARKS.items():
        if bench.hub == ds_id and name in HUB:
            return HUB[name]([l for l in langs if l in bench.hub_langs] or ["en"], None)
    out = []
    for i, (where, r) in enumerate(hub_rows(ds_id, split or None)):
        lang = text_field(where, r, "lang", "language", required=False) or "en"
        kind = text_field(where, r, "kind", required=False) or "harmful"
        if lang not in LANGS:
            raise LabError(f"{where}: unknown language code '{lang}' (expected one of {', '.join(LANGS)})")
        if kind not in ("harmful", "benign"):
            raise LabError(f"{where}: field 'kind': expected harmful or benign, got {kind!r}")
        pid = text_field(where, r, "pid", required=False) or f"{slug(ds_id)}-{r.get('id', i)}"
        if lang in langs:
            out.append(record(f"hub:{ds_id}", pid, lang, kind, slug(str(r.get("topic") or r.get("category") or ds_id)),
                              text_field(where, r, "prompt", "instruction", "goal", "question", "text")))
    return out


def _one(part: str, langs: list[str]) -> list[EvalPrompt]:
    if part.startswith("hub:"):
        return _generic_hub(part[4:], langs)
    head, sep, path = part.partition(":")
    name, _, sel = head.partition("@")
    if name in BENCHMARKS:
        return _named(name, sel or None, path if sep else None, langs)
    p = _local(part)
    if not p.exists():
        raise LabError(f"eval data '{part}': not a file or folder, and not a benchmark name "
                       f"({', '.join(BENCHMARKS)}, hub:<dataset id>)")
    if p.suffix == ".jsonl" and not p.name.startswith("mt_bench_"):
        return [r for r in read_jsonl(p, EvalPrompt, unique="id") if r.lang in langs]
    name = detect(p)
    if name is None:
        raise LabError(f"eval data '{part}': not recognised as the lab's eval JSONL or as a copy of "
                       f"{', '.join(BENCHMARKS)}; name it explicitly, e.g. 'multijail:{part}'")
    return _named(name, None, str(p), langs)


def limit_parallel(recs: list[EvalPrompt], limit: int | None) -> list[EvalPrompt]:
    """Keep `limit` evenly spaced pids per kind (parallel prompts stay together across languages)."""
    if limit is None:
        return recs
    allowed = set()
    for kind in ("harmful", "benign"):
        pids = list(dict.fromkeys(r.pid for r in recs if r.kind == kind))
        step = max(1, len(pids) / max(1, limit))
        allowed |= {pids[int(i * step)] for i in range(min(limit, len(pids)))}
    return [r for r in recs if r.pid in allowed]


def load_eval_source(spec: str, langs: Iterable[str], limit: int | None = None) -> list[EvalPrompt]:
    """Evaluation records for `langs` from the lab's JSONL, a public benchmark or several ('A+B')."""
    langs = list(langs)
    bad = [l for l in langs if l not in LANGS]
    if bad:
        raise LabError(f"eval langs: unknown language code(s) {bad} (expected {', '.join(LANGS)})")
    if limit is not None and limit < 1:
        raise LabError(f"eval limit: expected a positive number of prompts per kind, got {limit}")
    recs: list[EvalPrompt] = []
    for part in [s.strip() for s in str(spec).split("+")]:
        if not part:
            raise LabError(f"eval data '{spec}': empty source between '+'")
        recs += _one(part, langs)
    ids = set()
    for r in recs:
        if r.id in ids:
            raise LabError(f"eval data '{spec}': duplicate record id {r.id!r} (the same source given twice?)")
        ids.add(r.id)
    covered = {r.lang for r in recs}
    if not recs or set(langs) - covered:
        raise LabError(f"eval data '{spec}': no prompts for {', '.join(l for l in langs if l not in covered)} "
                       f"(coverage: {'; '.join(f'{b.name} ' + ','.join(b.langs) for b in BENCHMARKS.values())}); "
                       f"restrict the languages (--langs / eval.langs) or add a source with '+'")
    return limit_parallel(recs, limit)


def coverage_table() -> str:
    """The README's language-coverage table (markdown)."""
    head = "| benchmark | " + " | ".join(LANGS) + " | kind | hub id | notes |\n|---|" + "---|" * (len(LANGS) + 3) + "\n"
    rows = [f"| `{b.name}` | " + " | ".join("yes" if l in b.langs else "–" for l in LANGS)
            + f" | {'/'.join(b.kinds)} | {('`' + b.hub + '`') if b.hub else 'none (GitHub)'} | {b.notes} |"
            for b in BENCHMARKS.values()]
    return head + "\n".join(rows) + "\n"

