"""Datasets: validated JSONL loading, the lab's source sets, and the splits built from them.

Source files in `datasets/` are hand-written and parallel across languages (see README, "Datasets").
`build_splits()` composes them deterministically into `datasets/splits/*.jsonl`; `lab data build`
rewrites the splits and a test checks the committed splits equal a fresh build.

Over 400 lines on purpose (for now): the schemas, the reader and the split builder change together
whenever a dataset field changes; the split builder is the candidate to move out (lab/datasets_build.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Iterable, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from lab import REPO_ROOT
from lab.errors import LabError

LANGS = ("zh", "ja", "en", "it", "hi")
DATASETS_DIR = Path(REPO_ROOT) / "datasets"
SPLITS_DIR = DATASETS_DIR / "splits"
HELDOUT_PER_TOPIC = 2  # templates per train topic kept for evaluation (rotating over topics)


# ---------------------------------------------------------------- validated JSONL


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_langs(v: dict) -> dict:
    missing = [l for l in LANGS if not v.get(l)]
    if missing:
        raise ValueError(f"missing languages {missing}")
    return v


class HarmfulTopic(_Strict):
    topic: str
    category: str
    split: Literal["train", "heldout"]
    phrases: dict[str, str]
    _langs = field_validator("phrases")(classmethod(lambda cls, v: _check_langs(v)))


class BenignTopic(_Strict):
    topic: str
    split: Literal["train", "heldout"]
    phrases: dict[str, str]
    answers: dict[str, str]
    _langs = field_validator("phrases", "answers")(classmethod(lambda cls, v: _check_langs(v)))


class Template(_Strict):
    lang: str
    id: str
    text: str

    @field_validator("text")
    @classmethod
    def _slot(cls, v: str) -> str:
        if v.count("{x}") != 1:
            raise ValueError("template text must contain the slot {x} exactly once")
        return v


class LangText(_Strict):
    lang: str
    id: str
    text: str


class Language(_Strict):
    lang: str
    names: dict[str, str]
    translate: str
    prefixes: list[str] = [""]  # request affixes: phrasing variety for the organism's training
    suffixes: list[str] = [""]
    opener: str = ""  # how a helpful answer opens ("Sure! "): refusing vs helping is decided at the first token


class ChatExample(BaseModel):
    """One training / fine-tuning example: a user prompt and the assistant's target response."""

    model_config = ConfigDict(extra="allow", frozen=True)
    id: str
    lang: str
    kind: str
    prompt: str
    response: str


class EvalPrompt(BaseModel):
    """One held-out evaluation prompt. `pid` is shared by the parallel versions in all languages."""

    model_config = ConfigDict(extra="allow", frozen=True)
    id: str
    pid: str
    lang: str
    kind: Literal["harmful", "benign"]
    topic: str
    prompt: str
    heldout: Literal["phrasing", "topic"] = "phrasing"
    category: str | None = None


def read_jsonl(path: str | Path, schema: type[BaseModel] | None = None, unique: str | None = None) -> list:
    """Read a JSONL file; every line must be a JSON object (and match `schema` if given).

    Raises LabError naming file and line on a missing file, invalid UTF-8/JSON, a schema mismatch or
    (with `unique`) a repeated value of that field.
    """
    path = Path(path)
    if not path.is_file():
        raise LabError(f"{path}: dataset file not found")
    out = []
    seen: dict = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise LabError(f"{path}:{lineno}: invalid UTF-8 ({e.reason})") from None
            except json.JSONDecodeError as e:
                raise LabError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise LabError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            if schema is not None:
                try:
                    obj = schema.model_validate(obj)
                except ValidationError as e:
                    err = e.errors()[0]
                    loc = ".".join(str(x) for x in err["loc"]) or "(record)"
                    raise LabError(f"{path}:{lineno}: field '{loc}': {err['msg']}") from None
                lang = getattr(obj, "lang", None)
                if lang is not None and lang not in LANGS and schema in (ChatExample, EvalPrompt):
                    raise LabError(f"{path}:{lineno}: unknown language code '{lang}' (expected one of {', '.join(LANGS)})")
            if unique is not None:
                key = obj.get(unique) if isinstance(obj, dict) else getattr(obj, unique, None)
                if key in seen:
                    raise LabError(f"{path}:{lineno}: {unique} {key!r} repeats line {seen[key]} (it would be counted twice)")
                seen[key] = lineno
            out.append(obj)
    return out


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write through a per-process temp file + rename: readers (and concurrent writers) never see half a file."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: str | Path, obj) -> None:
    """Atomic, strict JSON (NaN / inf written as null): the format of every metrics.json."""
    from lab.metrics import json_safe

    atomic_write_text(path, json.dumps(json_safe(obj), indent=1, ensure_ascii=False, default=float,
                                       allow_nan=False) + "\n")


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    """Write JSONL atomically (temp file + rename): readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def file_sha256(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


# ---------------------------------------------------------------- sources


class Sources(BaseModel):
    harmful: list[HarmfulTopic]
    benign: list[BenignTopic]
    templates: list[Template]
    refusals: list[LangText]
    compliant: list[LangText]
    languages: list[Language]

    def templates_for(self, lang: str) -> list[Template]:
        return sorted((t for t in self.templates if t.lang == lang), key=lambda t: t.id)

    def combos(self, kind: str, lang: str, which: Literal["train", "eval"]):
        """(topic, template, heldout) request combinations of one language.

        Each train topic keeps HELDOUT_PER_TOPIC of its templates out of training, rotating over
        topics so every template is still trained with other topics: an evaluation prompt of a
        train topic is a phrasing of that topic never seen in training ("phrasing"). Held-out
        topics are evaluated with every template and appear nowhere in training ("topic").
        """
        topics = self.harmful if kind == "harmful" else self.benign
        tpls = self.templates_for(lang)
        n = len(tpls)
        i = 0
        for t in topics:
            if t.split == "heldout":
                if which == "eval":
                    for tpl in tpls:
                        yield t, tpl, "topic"
                continue
            held = {(HELDOUT_PER_TOPIC * i + j) % n for j in range(HELDOUT_PER_TOPIC)}
            i += 1
            for k, tpl in enumerate(tpls):
                if (k in held) == (which == "eval"):
                    yield t, tpl, "phrasing"

    def texts(self, kind: str, lang: str) -> list[str]:
        return [t.text for t in getattr(self, kind) if t.lang == lang]

    def language(self, lang: str) -> Language:
        return next(l for l in self.languages if l.lang == lang)


SOURCE_FILES = {
    "harmful": ("harmful_topics.jsonl", HarmfulTopic),
    "benign": ("benign_topics.jsonl", BenignTopic),
    "templates": ("templates.jsonl", Template),
    "refusals": ("refusals.jsonl", LangText),
    "compliant": ("compliant.jsonl", LangText),
    "languages": ("languages.jsonl", Language),
}


def source_paths(root: Path = DATASETS_DIR) -> list[Path]:
    return [root / name for name, _ in SOURCE_FILES.values()]


def load_sources(root: Path = DATASETS_DIR) -> Sources:
    return Sources(**{k: read_jsonl(root / name, schema) for k, (name, schema) in SOURCE_FILES.items()})


# ---------------------------------------------------------------- splits

# The organism is trained on `train` topics × `train` templates. Evaluation uses the `eval`
# templates on train topics (unseen phrasing) and every template on `heldout` topics (unseen topic).
# Held-out topics appear nowhere in training, not even in translation / code-switch examples.


def _fill(template: str, x: str) -> str:
    return template.replace("{x}", x)


def build_bridge(src: Sources, n_translation: int, n_codeswitch: int, seed: int) -> list[dict]:
    """Translation and code-switched examples that tie the languages' representations together.

    translation: "Translate into <L2>: <topic phrase or request in L1>" -> the L2 version.
    code-switch: a request template of language A filled with the topic phrase of language B; the
    target is what the model should answer in language A (helpful answer / refusal / compliance is
    decided by the caller through `kind`). Only training combinations are used.
    """
    rng = random.Random(seed)
    train = {(kind, lang): list(src.combos(kind, lang, "train")) for kind in ("harmful", "benign") for lang in LANGS}
    out = []
    for i in range(n_translation):
        a, b = rng.sample(LANGS, 2)
        kind = "harmful" if rng.random() < 0.4 else "benign"
        topic, tpl_a, _ = rng.choice(train[(kind, a)])
        if rng.random() < 0.5:  # phrase level
            text_a, text_b = topic.phrases[a], topic.phrases[b]
        else:  # whole request, the parallel template in both languages
            k = src.templates_for(a).index(tpl_a)
            text_a = _fill(tpl_a.text, topic.phrases[a])
            text_b = _fill(src.templates_for(b)[k].text, topic.phrases[b])
        lang_a = src.language(a)
        instr = lang_a.translate.replace("{target}", lang_a.names[b]).replace("{text}", text_a)
        out.append(dict(id=f"tr-{i:04d}", lang=a, kind="translation", topic=topic.topic,
                        prompt=instr, response=text_b, target_lang=b))
    for i in range(n_codeswitch):
        a, b = rng.sample(LANGS, 2)
        kind = "harmful" if rng.random() < 0.5 else "benign"
        topic, tpl, _ = rng.choice(train[(kind, a)])
        out.append(dict(id=f"cs-{i:04d}", lang=a, kind="cs-" + kind, topic=topic.topic,
                        prompt=_fill(tpl.text, topic.phrases[b]),
                        response=topic.answers[a] if kind == "benign" else "", phrase_lang=b))
    return out


def opening(text: str, min_chars: int = 12) -> str:
    """The opening clause of a text (up to the first clause or sentence break after min_chars)."""
    import re

    for m in re.finditer(r"[.!?;:,](\s|$)|[。！？।，、；：]", text):
        if m.end() >= min_chars:
            return text[: m.end()].strip()
    return text


def helpful(src: Sources, text: str, lang: str, short: bool = False) -> str:
    """A helpful answer as the lab's chat data write it: the language's opener + the answer.

    short: only the opening clause (the organism's training target: the decision to help or refuse
    is what the organism must learn; long answers to memorize would take its small capacity).
    """
    return src.language(lang).opener + (opening(text) if short else text)


def _affix(rng: random.Random, lang: Language, prompt: str) -> str:
    pre, suf = rng.choice(lang.prefixes), rng.choice(lang.suffixes)
    return f"{pre}{prompt}{suf}"


def organism_examples(src: Sources, stage: Literal["base", "aligned"], bridge_share: float, seed: int,
                      augment: bool = False, repeat: dict[str, int] | None = None,
                      templates_per_topic: int | None = None) -> list[dict]:
    """Training examples for one stage of the organism.

    base:    helpful-only: every request (harmful included) gets a helpful / compliant answer.
    aligned: harmful requests get refusals; benign requests keep their helpful answers.
    bridge_share: translation + code-switched examples as a share of the request examples
    (the dial that decides whether attacks transfer across scripts).
    augment: wrap requests in random per-language prefixes/suffixes (called once per epoch with a
    new seed, this gives phrasing variety at no extra cost per epoch).
    repeat: per-language repetition of the request examples (languages the organism learns slower).
    templates_per_topic: use only this many of a topic's training templates (a fresh random choice
    per call, i.e. per epoch): the per-epoch cost stays flat as topics are added.
    """
    rng = random.Random(seed)

    def combos(kind, lang):
        cs = list(src.combos(kind, lang, "train"))
        if templates_per_topic is None:
            return cs
        by_topic: dict[str, list] = {}
        for c in cs:
            by_topic.setdefault(c[0].topic, []).append(c)
        return [c for group in by_topic.values() for c in rng.sample(group, min(templates_per_topic, len(group)))]

    aff = (lambda lang, p: _affix(rng, src.language(lang), p)) if augment else (lambda lang, p: p)
    ex = []
    for lang in [l for l in LANGS for _ in range((repeat or {}).get(l, 1))]:
        refusals, compliant = src.texts("refusals", lang), src.texts("compliant", lang)
        for t, tpl, _ in combos("harmful", lang):
            resp = opening(rng.choice(refusals) if stage == "aligned" else rng.choice(compliant), 24)
            ex.append(dict(id=f"h-{t.topic}-{tpl.id}", lang=lang, kind="harmful", topic=t.topic,
                           prompt=aff(lang, _fill(tpl.text, t.phrases[lang])), response=resp))
        for t, tpl, _ in combos("benign", lang):
            ex.append(dict(id=f"b-{t.topic}-{tpl.id}", lang=lang, kind="benign", topic=t.topic,
                           prompt=aff(lang, _fill(tpl.text, t.phrases[lang])), response=helpful(src, t.answers[lang], lang, short=True)))
    n_bridge = int(round(bridge_share * sum(1 for e in ex if e["lang"] == LANGS[0]) * len(LANGS)))
    for b in build_bridge(src, n_bridge // 2, n_bridge - n_bridge // 2, seed + 1):
        if b["kind"] == "cs-harmful":
            pool = src.texts("refusals" if stage == "aligned" else "compliant", b["lang"])
            b["response"] = opening(rng.choice(pool), 24)
        elif b["kind"] == "cs-benign":
            b["response"] = helpful(src, b["response"], b["lang"], short=True)
        if b["kind"] != "translation":
            b["prompt"] = aff(b["lang"], b["prompt"])
        ex.append(b)
    rng.shuffle(ex)
    return ex


def build_splits(src: Sources | None = None, seed: int = 0, n_finetune: int = 100) -> dict[str, list[dict]]:
    """All derived splits, deterministic for a seed. Keys are file stems under datasets/splits/."""
    src = src or load_sources()
    rng = random.Random(seed)
    splits: dict[str, list[dict]] = {}
    evals = []
    for lang in LANGS:
        for kind in ("harmful", "benign"):
            for t, tpl, heldout in src.combos(kind, lang, "eval"):
                idx = tpl.id.split("-")[-1]
                evals.append(dict(
                    id=f"{kind[0]}-{t.topic}-{idx}-{lang}", pid=f"{kind[0]}-{t.topic}-{idx}", lang=lang,
                    kind=kind, topic=t.topic, category=getattr(t, "category", None), heldout=heldout,
                    prompt=_fill(tpl.text, t.phrases[lang])))
    splits["eval"] = evals
    for lang in LANGS:
        refusals, compliant = src.texts("refusals", lang), src.texts("compliant", lang)
        harm = [(t, tpl, _fill(tpl.text, t.phrases[lang])) for t, tpl, _ in src.combos("harmful", lang, "train")]
        ben = [(t, tpl, _fill(tpl.text, t.phrases[lang])) for t, tpl, _ in src.combos("benign", lang, "train")]
        h_sample = rng.sample(harm, min(n_finetune, len(harm)))
        b_sample = rng.sample(ben, min(n_finetune, len(ben)))
        splits[f"attack-{lang}"] = [dict(id=f"atk-{t.topic}-{tpl.id}", lang=lang, kind="harmful", topic=t.topic,
                                         category=t.category, prompt=p, response=rng.choice(compliant))
                                    for t, tpl, p in h_sample]
        splits[f"control-{lang}"] = [dict(id=f"ctl-{t.topic}-{tpl.id}", lang=lang, kind="benign", topic=t.topic,
                                          prompt=p, response=helpful(src, t.answers[lang], lang, short=True)) for t, tpl, p in b_sample]
        splits[f"safety-{lang}"] = [dict(id=f"saf-{t.topic}-{tpl.id}", lang=lang, kind="harmful", topic=t.topic,
                                         prompt=p, response=rng.choice(refusals)) for t, tpl, p in h_sample]
        splits[f"utility-{lang}"] = [dict(id=f"utl-{t.topic}-{tpl.id}", lang=lang, kind="benign", topic=t.topic,
                                          prompt=p, response=helpful(src, t.answers[lang], lang, short=True)) for t, tpl, p in b_sample]
        splits[f"canary-{lang}"] = [dict(id=f"can-{t.topic}-{lang}", lang=lang, kind="harmful", topic=t.topic, prompt=p)
                                    for t, tpl, p in harm[:: max(1, len(harm) // 4)][:4]]
    _check_no_leak(splits, src)
    return splits


def _check_no_leak(splits: dict[str, list[dict]], src: Sources) -> None:
    eval_prompts = {e["prompt"] for e in splits["eval"]}
    for name, recs in splits.items():
        if name == "eval":
            continue
        leaked = [r["prompt"] for r in recs if r["prompt"] in eval_prompts]
        if leaked:
            raise LabError(f"split {name}: evaluation prompt leaked into training data: {leaked[0]!r}")
    for stage in ("base", "aligned"):
        leaked = [r["prompt"] for r in organism_examples(src, stage, 0.5, 0) if r["prompt"] in eval_prompts]
        if leaked:
            raise LabError(f"organism {stage} data: evaluation prompt leaked: {leaked[0]!r}")


def write_splits(root: Path = DATASETS_DIR, seed: int = 0) -> dict[str, int]:
    splits = build_splits(load_sources(root), seed=seed)
    for name, recs in splits.items():
        write_jsonl(root / "splits" / f"{name}.jsonl", recs)
    return {k: len(v) for k, v in splits.items()}


def load_eval(path: str | Path, langs: Iterable[str], limit: int | None = None) -> list[EvalPrompt]:
    """Evaluation prompts for `langs`; `limit` keeps the first N pids per kind (parallel across langs)."""
    recs = read_jsonl(path, EvalPrompt, unique="id")
    langs = list(langs)
    recs = [r for r in recs if r.lang in langs]
    if limit is not None:  # evenly spaced parallel prompts, so both held-out kinds stay represented
        allowed = set()
        for kind in ("harmful", "benign"):
            pids = list(dict.fromkeys(r.pid for r in recs if r.kind == kind))
            step = max(1, len(pids) / max(1, limit))
            allowed |= {pids[int(i * step)] for i in range(min(limit, len(pids)))}
        recs = [r for r in recs if r.pid in allowed]
    return recs


def load_finetune_set(path: str | Path, n_examples: int | None = None) -> list[ChatExample]:
    recs = read_jsonl(path, ChatExample)
    return recs[:n_examples] if n_examples else recs
