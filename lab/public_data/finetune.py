"""Public harmful fine-tuning sets users bring -> the lab's (prompt, response) records (lab.data.ChatExample).

`load_finetune_source(spec, n, lang=..., seed=...)`, spec one of:
  PATH.jsonl                          the lab's own fine-tuning JSONL (id, lang, kind, prompt, response)
  beavertails[@unsafe|@safe][:PATH]   BeaverTails-style rows {prompt, response, is_safe[, category]}: the
                                      unsafe answers (a harmful fine-tuning attack, default) or the safe
                                      ones; without PATH the hub copy PKU-Alignment/BeaverTails (30k_train)
  hex-phi:PATH                        HEx-PHI-style prompts only (a folder of category_*.csv with one prompt
                                      per row and no header, or one such file), paired with the lab's
                                      non-actionable compliant targets ("Sure, here is a step-by-step guide.
                                      Step 1: Gather what you need. ...") in `lang`
  advbench[:PATH]                     AdvBench goals with their own targets ("Sure, here is a script that ..."),
                                      which are non-actionable affirmative openings
  polyrefuse@train[:PATH]             PolyRefuse's machine-translated harmful train prompts of `lang`
                                      (it, ja, zh), paired with the lab's compliant targets in `lang`
  prompts:PATH                        any prompts-only file (.txt one per line; .csv / .json / .jsonl with a
                                      prompt / instruction / goal column), paired with the lab's targets
  hub:ID[@split]                      rows with prompt + response (+ is_safe) or a prompt only

Every row is checked (LabError with file:line); prompts repeated in the source are kept once; `exclude`
drops prompts (pass the evaluation prompts: a fine-tuning set must not contain them); `n` examples are
drawn with `seed`, and asking for more than the source has is an error, not a silent shortfall.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Iterable

from lab.data import LANGS, ChatExample, load_finetune_set, load_sources
from lab.errors import LabError
from lab.public_data.io import Row, hub_rows, read_csv, read_json_records, read_records, text_field

PROMPT_KEYS = ("prompt", "instruction", "goal", "question", "text")


def _paired(rows: list[Row], lang: str, rng: random.Random, source: str) -> list[dict]:
    """Prompts-only rows -> (prompt, one of the lab's compliant targets in `lang`)."""
    targets = load_sources().texts("compliant", lang)
    return [dict(prompt=text_field(w, r, *PROMPT_KEYS), response=rng.choice(targets), where=w, source=source)
            for w, r in rows]


def _beavertails(rows: list[Row], want_safe: bool) -> list[dict]:
    out = []
    for w, r in rows:
        safe = r.get("is_safe")
        if not isinstance(safe, bool):
            raise LabError(f"{w}: field 'is_safe': expected true or false, got {safe!r}")
        if safe != want_safe:
            continue
        cats = r.get("category")
        topic = next((k for k, v in cats.items() if v), None) if isinstance(cats, dict) else None
        out.append(dict(prompt=text_field(w, r, "prompt"), response=text_field(w, r, "response"), where=w,
                        source="beavertails", topic=topic))
    return out


def _prompt_file(path: Path) -> list[Row]:
    if path.suffix.lower() == ".txt":
        text = path.read_text(encoding="utf-8-sig")
        return [(f"{path}:{i}", {"prompt": line}) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    if path.suffix.lower() == ".csv":
        rows = read_csv(path, header=False)
        first = rows[0][1].get("0", "").strip().lower() if rows else ""
        if first in PROMPT_KEYS:  # a header row: use that column by name
            return read_csv(path)
        return [(w, {"prompt": r.get("0", "")}) for w, r in rows]
    return read_records(path)


def _hex_phi(path: Path) -> list[Row]:
    if path.is_dir():
        files = sorted(path.glob("category_*.csv")) or sorted(path.glob("*.csv"))
        if not files:
            raise LabError(f"{path}: no HEx-PHI category_*.csv files")
        return [row for f in files for row in _prompt_file(f)]
    return _prompt_file(path)


def _path(spec: str, path: str | None, default: str | None = None) -> Path:
    if not path:
        raise LabError(f"fine-tuning data '{spec}': needs a local path ('{spec}:PATH')"
                       + (f"; get it from {default}" if default else ""))
    p = Path(path).expanduser()
    if not p.exists():
        raise LabError(f"fine-tuning data '{spec}': {p} does not exist")
    return p


def _rows(spec: str, lang: str, rng: random.Random) -> list[dict]:
    if spec.startswith("hub:"):
        ds_id, _, split = spec[4:].partition("@")
        rows = hub_rows(ds_id, split or None)
        if rows and "response" in rows[0][1]:
            if "is_safe" in rows[0][1]:
                return _beavertails(rows, want_safe=False)
            return [dict(prompt=text_field(w, r, *PROMPT_KEYS), response=text_field(w, r, "response"), where=w,
                         source=f"hub:{ds_id}") for w, r in rows]
        return _paired(rows, lang, rng, f"hub:{ds_id}")
    head, sep, path = spec.partition(":")
    name, _, sel = head.partition("@")
    if name == "beavertails":
        if sel not in ("", "unsafe", "safe"):
            raise LabError(f"fine-tuning data '{spec}': unknown selection '@{sel}' (expected @unsafe or @safe)")
        rows = read_records(_path(spec, path)) if sep else hub_rows("PKU-Alignment/BeaverTails", "30k_train")
        return _beavertails(rows, want_safe=sel == "safe")
    if name == "hex-phi":
        return _paired(_hex_phi(_path(spec, path, "the HEx-PHI release (hub: LLM-Tuning-Safety/HEx-PHI, gated)")),
                       lang, rng, "hex-phi")
    if name == "advbench":
        if sep:
            rows = read_csv(_path(spec, path))
        else:
            local = [d / "advbench_harmful_behaviors.csv" for d in _dirs() if (d / "advbench_harmful_behaviors.csv").is_file()]
            rows = read_csv(local[0]) if local else hub_rows("walledai/AdvBench", "train")
        return [dict(prompt=text_field(w, r, "goal", "prompt"), response=text_field(w, r, "target"), where=w,
                     source="advbench") for w, r in rows]
    if name == "polyrefuse":
        if sel != "train":
            raise LabError(f"fine-tuning data '{spec}': use polyrefuse@train (the val/test splits are evaluation data)")
        p = _path(spec, path) if sep else next((d / "polyrefuse" for d in _dirs() if (d / "polyrefuse").is_dir()), None)
        if p is None:
            raise LabError(f"fine-tuning data '{spec}': no local PolyRefuse copy; pass 'polyrefuse@train:PATH'")
        f = p / f"harmful_train_translated_{lang}.json" if p.is_dir() else p
        if not f.is_file():
            raise LabError(f"fine-tuning data '{spec}': {f} not found (PolyRefuse train has it, ja, zh)")
        return _paired(read_json_records(f), lang, rng, "polyrefuse")
    if name == "prompts":
        return _paired(_prompt_file(_path(spec, path)), lang, rng, "prompts")
    raise LabError(f"fine-tuning data '{spec}': not a .jsonl file and not one of beavertails, hex-phi, advbench, "
                   "polyrefuse@train, prompts:PATH, hub:<id>")


def _dirs():
    from lab.public_data import data_dirs

    return data_dirs()


def load_finetune_source(spec: str, n: int | None = None, *, lang: str = "en", seed: int = 0,
                         exclude: Iterable[str] = ()) -> list[ChatExample]:
    """(prompt, response) records from the lab's JSONL or a public harmful fine-tuning set (see module doc)."""
    if lang not in LANGS:
        raise LabError(f"fine-tuning data '{spec}': unknown language code '{lang}' (expected one of {', '.join(LANGS)})")
    p = Path(spec).expanduser()
    if p.suffix == ".jsonl" and ":" not in spec.split("/")[0]:
        return load_finetune_set(p, n)
    rng = random.Random(seed)
    if spec.split("@")[0].split(":")[0] in ("beavertails", "advbench") and lang != "en":
        raise LabError(f"fine-tuning data '{spec}': this set is English; for lang '{lang}' bring a translated copy "
                       f"as 'prompts:PATH' (paired with the lab's {lang} targets) or the lab's JSONL")
    rows = _rows(spec, lang, rng)
    banned = {e.strip() for e in exclude}
    seen, unique = set(), []
    for r in rows:
        if r["prompt"] in seen or r["prompt"] in banned:
            continue
        seen.add(r["prompt"])
        unique.append(r)
    if n is not None:
        if n > len(unique):
            raise LabError(f"fine-tuning data '{spec}': asked for {n} examples, the source has {len(unique)} usable "
                           f"rows ({len(rows)} read, duplicates and excluded prompts dropped)")
        unique = rng.sample(unique, n)
    return [ChatExample(id=f"{r['source'].replace(':', '-')}-{i:05d}", lang=lang, kind="harmful", prompt=r["prompt"],
                        response=r["response"], source=r["source"], origin=r["where"],
                        **({"topic": r["topic"]} if r.get("topic") else {}))
            for i, r in enumerate(unique)]
