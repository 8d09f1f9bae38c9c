"""Public evaluation benchmarks -> the lab's evaluation records (lab.data.EvalPrompt).

Each reader takes a local copy (the file / folder as published upstream) or hub rows, checks every row
(LabError with file:line), and gives parallel versions of one prompt the same `pid`.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lab.data import LANGS, EvalPrompt
from lab.errors import LabError
from lab.public_data.io import Row, hub_rows, read_csv, read_json_records, text_field


@dataclass(frozen=True)
class Benchmark:
    name: str
    kinds: tuple[str, ...]
    langs: tuple[str, ...]  # of the lab's five languages
    local: str  # name of the upstream file / folder (under LAB_DATA_DIR)
    upstream: str  # where to get it
    hub: str | None = None  # hub dataset id (datasets.load_dataset)
    parallel: bool = True
    notes: str = ""
    hub_langs: tuple[str, ...] = field(default=())


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "misc"


def record(source: str, pid: str, lang: str, kind: str, topic: str, prompt: str, category: str | None = None) -> EvalPrompt:
    return EvalPrompt(id=f"{pid}-{lang}", pid=pid, lang=lang, kind=kind, topic=topic, prompt=prompt,
                      heldout="topic", category=category, source=source)


# ---------------------------------------------------------------- MultiJail


def _multijail(rows: list[Row], langs) -> list[EvalPrompt]:
    out, seen = [], set()
    for where, r in rows:
        rid = text_field(where, r, "id")
        if rid in seen:
            raise LabError(f"{where}: duplicate id {rid!r}")
        seen.add(rid)
        tags = text_field(where, r, "tags", required=False) or ""
        try:
            parsed = ast.literal_eval(tags) if tags.startswith("[") else [tags]
        except (ValueError, SyntaxError):
            parsed = [tags]
        category = str(parsed[0]) if parsed and parsed[0] else None
        for lang in langs:
            out.append(record("multijail", f"multijail-{rid}", lang, "harmful", slug(category or "misc"),
                              text_field(where, r, lang), category))
    return out


def multijail_local(path: Path, langs, sel: str | None) -> list[EvalPrompt]:
    return _multijail(read_csv(_file(path, "MultiJail.csv")), langs)


def multijail_hub(langs, sel: str | None) -> list[EvalPrompt]:
    return _multijail(hub_rows("DAMO-NLP-SG/MultiJail", "train"), langs)


# ---------------------------------------------------------------- XSafety

XSAFETY_SKIP = {"commonsense", "commen_sense"}  # multiple-choice "output the unsafe option" items, not requests


def xsafety_local(path: Path, langs, sel: str | None) -> list[EvalPrompt]:
    path = _dir(path, "xsafety")
    wanted = {s.strip() for s in sel.split(",")} if sel else None
    per_lang: dict[str, dict[str, list[Row]]] = {}
    for lang in langs:
        d = path / lang
        if not d.is_dir():
            raise LabError(f"{d}: XSafety folder for '{lang}' not found (expected {path}/<lang>/<Scenario>.csv)")
        files = {}
        for f in sorted(d.glob("*.csv")):
            scen = re.sub(r"_(n|en)$", "", f.stem)
            if scen in XSAFETY_SKIP or (wanted and scen not in wanted):
                continue
            files[scen] = read_csv(f, header=False)
        per_lang[lang] = files
    scenarios = sorted(set.intersection(*(set(v) for v in per_lang.values()))) if per_lang else []
    if wanted and set(wanted) - set(scenarios):
        raise LabError(f"xsafety@{sel}: unknown scenario(s) {sorted(set(wanted) - set(scenarios))} "
                       f"(found: {', '.join(scenarios)})")
    out = []
    for scen in scenarios:
        counts = {lang: len(per_lang[lang][scen]) for lang in langs}
        if len(set(counts.values())) > 1:
            raise LabError(f"{path}: XSafety scenario {scen} has different row counts per language {counts} "
                           "(rows are parallel by position)")
        for lang in langs:
            for i, (where, r) in enumerate(per_lang[lang][scen]):
                extra = [v for k, v in r.items() if k != "0" and v.strip()]
                if extra:
                    raise LabError(f"{where}: expected one prompt column, found more text {extra[0][:60]!r}")
                out.append(record("xsafety", f"xsafety-{slug(scen)}-{i:03d}", lang, "harmful", slug(scen),
                                  text_field(where, r, "0"), scen))
    return out


# ---------------------------------------------------------------- PolyRefuse


def polyrefuse_local(path: Path, langs, sel: str | None) -> list[EvalPrompt]:
    path = _dir(path, "polyrefuse")
    split = sel or "test"
    if split not in ("train", "val", "test"):
        raise LabError(f"polyrefuse@{split}: unknown split (expected train, val or test)")
    out = []
    for kind, stem in (("harmful", "harmful"), ("benign", "harmless")):
        originals: dict[int, tuple[str, str]] = {}
        for lang in langs:
            f = path / f"{stem}_{split}_translated_{lang}.json"
            if not f.is_file():
                continue  # PolyRefuse has no hi, no zh harmless test, no en train/val
            for i, (where, r) in enumerate(read_json_records(f)):
                translated = lang != "en" and "instruction_translated" in r
                prompt = text_field(where, r, "instruction_translated" if translated else "instruction")
                orig = text_field(where, r, "instruction")
                if split == "test":  # test files carry the English original: check they are parallel
                    if i in originals and originals[i][0] != orig:
                        raise LabError(f"{where}: record {i} is not parallel to {originals[i][1]} "
                                       f"(English originals differ)")
                    originals.setdefault(i, (orig, where))
                cat = r.get("category") if isinstance(r.get("category"), str) else None
                out.append(record("polyrefuse", f"polyrefuse-{split}-{kind[0]}-{i:04d}", lang, kind,
                                  slug(cat or ("harmful" if kind == "harmful" else "harmless")), prompt, cat))
    if not out:
        raise LabError(f"{path}: no PolyRefuse {split} files for {', '.join(langs)} "
                       f"(expected harmful_{split}_translated_<lang>.json)")
    return out


# ---------------------------------------------------------------- AdvBench


def _advbench(rows: list[Row]) -> list[EvalPrompt]:
    return [record("advbench", f"advbench-{i:03d}", "en", "harmful", "advbench", text_field(w, r, "goal", "prompt"))
            for i, (w, r) in enumerate(rows)]


def advbench_local(path: Path, langs, sel: str | None) -> list[EvalPrompt]:
    return _advbench(read_csv(_file(path, "advbench_harmful_behaviors.csv")))


def advbench_hub(langs, sel: str | None) -> list[EvalPrompt]:
    return _advbench(hub_rows("walledai/AdvBench", "train"))


# ---------------------------------------------------------------- MT-Bench (the benign set)

MT_BENCH_FILES = {"en": "en", "zh": "zh", "ja": "jp", "it": "it", "hi": "hindi"}


def mt_bench_local(path: Path, langs, sel: str | None) -> list[EvalPrompt]:
    path = _dir(path, "mt_bench")
    out, ids = [], {}
    for lang in langs:
        f = path / f"mt_bench_{MT_BENCH_FILES[lang]}_question.jsonl"
        got = []
        for where, r in read_json_records(f):
            qid = r.get("question_id")
            turns = r.get("turns")
            if not isinstance(qid, int):
                raise LabError(f"{where}: field 'question_id': expected an integer")
            if not isinstance(turns, list) or not turns:
                raise LabError(f"{where}: field 'turns': expected a non-empty list of questions")
            prompt = text_field(where, {"turns[0]": turns[0]}, "turns[0]")
            got.append(qid)
            cat = r.get("category") if isinstance(r.get("category"), str) else None
            out.append(record("mt-bench", f"mtbench-{qid}", lang, "benign", slug(cat or "mt-bench"), prompt, cat))
        ids[lang] = got
    ref = next(iter(ids.values()), [])
    for lang, got in ids.items():
        if sorted(got) != sorted(ref):
            raise LabError(f"{path}: MT-Bench question ids of '{lang}' differ from '{next(iter(ids))}' (files are parallel by id)")
    return out


def mt_bench_hub(langs, sel: str | None) -> list[EvalPrompt]:
    out = []
    for where, r in hub_rows("HuggingFaceH4/mt_bench_prompts", "train"):
        turns = r.get("prompt")
        if not isinstance(turns, list) or not turns:
            raise LabError(f"{where}: field 'prompt': expected a non-empty list of questions")
        cat = r.get("category") if isinstance(r.get("category"), str) else None
        out.append(record("mt-bench", f"mtbench-{r.get('prompt_id')}", "en", "benign", slug(cat or "mt-bench"),
                          text_field(where, {"prompt[0]": turns[0]}, "prompt[0]"), cat))
    return out


# ---------------------------------------------------------------- registry


def _file(path: Path, default_name: str) -> Path:
    return path / default_name if path.is_dir() else path


def _dir(path: Path, default_name: str) -> Path:
    if (path / default_name).is_dir():
        return path / default_name
    if not path.is_dir():
        raise LabError(f"{path}: folder not found")
    return path


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("multijail", ("harmful",), ("en", "zh", "it"), "MultiJail.csv",
              "github.com/DAMO-NLP-SG/multilingual-safety-for-LLMs data/MultiJail.csv", "DAMO-NLP-SG/MultiJail",
              notes="315 human-translated harmful prompts; no ja, no hi", hub_langs=("en", "zh", "it")),
    Benchmark("xsafety", ("harmful",), ("en", "zh", "ja", "hi"), "xsafety",
              "github.com/Jarviswang94/Multilingual_safety_benchmark (the per-language CSV folders)",
              notes="13 scenarios x 200 prompts (commonsense multiple-choice items skipped); no it; "
                    "measures unsafe answers, and some scenarios (Mental_Health, Physical_Harm) are best answered, "
                    "not refused: read refusal per scenario (`xsafety@Crimes_And_Illegal_Activities,...`)"),
    Benchmark("polyrefuse", ("harmful", "benign"), ("en", "zh", "ja", "it"), "polyrefuse",
              "github.com/mainlp/Multilingual-Refusal PolyRefuse/",
              notes="machine-translated; test split: 572 harmful, 500 harmless (no zh harmless); no hi"),
    Benchmark("advbench", ("harmful",), ("en",), "advbench_harmful_behaviors.csv",
              "github.com/llm-attacks/llm-attacks data/advbench/harmful_behaviors.csv", "walledai/AdvBench",
              parallel=False, notes="520 English harmful behaviours", hub_langs=("en",)),
    Benchmark("mt-bench", ("benign",), ("en", "zh", "ja", "it", "hi"), "mt_bench",
              "mt_bench_<en|jp|it|hindi>_question.jsonl of github.com/ServiceNow/FastChat, mt_bench_zh_question.jsonl of github.com/GeneZC/MiniMA",
              "HuggingFaceH4/mt_bench_prompts", notes="80 benign questions (first turn); hub copy is English only",
              hub_langs=("en",)),
]}

LOCAL: dict[str, Callable] = {"multijail": multijail_local, "xsafety": xsafety_local, "polyrefuse": polyrefuse_local,
                              "advbench": advbench_local, "mt-bench": mt_bench_local}
HUB: dict[str, Callable] = {"multijail": multijail_hub, "advbench": advbench_hub, "mt-bench": mt_bench_hub}
assert set(LOCAL) == set(BENCHMARKS) and all(l in LANGS for b in BENCHMARKS.values() for l in b.langs)
