"""Labelled answers for developing and measuring the detector (loaders shared by lab.detect.train and
benchmarks/detector*.py).

* dev data (../shared/data/detector-dev, see its SOURCES.md): XSTest v2 completions of 5 models (English,
  human labels: 2_full_refusal / 3_partial_refusal -> refusal) and PolyRefuse gemma-2-9b-it answers
  (en/it/zh/ja, WildGuard `refusal` labels; missing labels skipped);
* own cases (eval/detector/cases/*.jsonl, `label` 0/1);
* own labelled set (eval/detector/labelled/{tune,untuned}.jsonl, `label` bool; see its build.py).
Every row: {lang, source, prompt, response, label (0/1)} (+ id, behaviour where known).
"""
from __future__ import annotations

import csv
import glob
import json
from pathlib import Path

from . import DetectInputError
from .resources import RESOURCE_DIR

REPO = RESOURCE_DIR.parents[1]
DEFAULT_SHARED = REPO.parent / "shared" / "data" / "detector-dev"
CASES_DIR = RESOURCE_DIR / "cases"
LABELLED_DIR = RESOURCE_DIR / "labelled"
LANGS = ("zh", "ja", "en", "it", "hi")


def load_xstest(root: Path = DEFAULT_SHARED) -> list[dict]:
    out = []
    for f in sorted(glob.glob(str(Path(root) / "xstest" / "model_completions" / "*.csv"))):
        model = Path(f).stem.replace("xstest_v2_completions_", "")
        with open(f, newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                lab_ = r.get("final_label", "")
                if not lab_ or lab_[0] not in "123":
                    continue
                out.append({"lang": "en", "source": f"xstest-{model}", "prompt": r["prompt"],
                            "response": r["completion"] or "", "label": int(lab_[0] in "23")})
    return out


def load_polyrefuse(root: Path = DEFAULT_SHARED) -> list[dict]:
    out = []
    for f in sorted(glob.glob(str(Path(root) / "polyrefuse-gemma" / "*.json"))):
        parts = Path(f).stem.split("__")
        lang, setting = parts[1], parts[2].replace("harmful_", "").replace("_evaluations", "")
        with open(f, encoding="utf-8") as fh:
            data = json.load(fh)
        for c in data["completions"]:
            lab_ = (c.get("wildguard") or {}).get("refusal")
            if lab_ not in (0, 1):
                continue
            out.append({"lang": lang, "source": f"polyrefuse-{setting}", "prompt": c.get("instruction"),
                        "response": c.get("response") or "", "label": int(lab_)})
    return out


def load_dev(root: Path = DEFAULT_SHARED) -> list[dict]:
    root = Path(root)
    return load_xstest(root) + load_polyrefuse(root) if root.is_dir() else []


def _jsonl(path: Path):
    with open(path, encoding="utf-8") as fh:
        for no, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield no, json.loads(line)
                except ValueError as e:
                    raise DetectInputError(f"{path}:{no}: invalid JSON ({e})") from None


def load_cases(d: Path = CASES_DIR, source: str = "cases", behaviour_key: str = "kind") -> list[dict]:
    """Every <lang>.jsonl of `d` as training rows of one source group (`source`)."""
    out = []
    for f in sorted(Path(d).glob("*.jsonl")):
        for _no, r in _jsonl(f):
            out.append({"lang": r["lang"], "source": source, "prompt": r.get("prompt"), "response": r["response"],
                        "label": int(r["label"]), "id": r.get("id"), "behaviour": r.get(behaviour_key)})
    return out


SHORT_DIR = CASES_DIR.parent / "short"


def load_short(d: Path = SHORT_DIR) -> list[dict]:
    """2.5: bare-word and one-line answers (eval/detector/short/<lang>.jsonl, all non-refusals; training only).
    2.4 called a one-word answer ("music") a refusal: short answers with no rule signal were decided by a few
    opening n-grams. The defense task's 20 label words are deliberately not in these files. Source group
    "organism" (answers labelled by construction): as a group of its own it cost 0.009 mean balanced accuracy
    on fresh4 (trained without fresh4), in the organism's group 0.003; both fixed "music"."""
    return load_cases(d, source="organism", behaviour_key="behaviour")


def load_labelled(split: str, d: Path = LABELLED_DIR) -> list[dict]:
    """split: 'tune' (may be fit on) or 'untuned' (never fit on)."""
    path = Path(d) / f"{split}.jsonl"
    out = []
    for no, r in _jsonl(path):
        for k in ("lang", "response", "label"):
            if k not in r:
                raise DetectInputError(f"{path}:{no}: missing field {k!r}")
        out.append({"lang": r["lang"], "source": f"own-{split}", "prompt": r.get("prompt"), "response": r["response"],
                    "label": int(bool(r["label"])), "id": r.get("id"), "behaviour": r.get("behaviour")})
    return out


FRESH_DIR = LABELLED_DIR.parent / "fresh"
INDEPENDENT_SETS = ("fresh", "fresh2", "fresh3", "fresh4", "fresh5", "fresh6", "fresh7", "fresh8", "explain", "fresh9", "fresh10", "fresh11")


def load_fresh(half: str = "test", d: Path = FRESH_DIR, name: str | None = None) -> list[dict]:
    """An independent split (eval/detector/fresh/<lang>.jsonl: two authors, 2.1 round; fresh2/: five more
    authors, one per language, 2.2 round; fresh3/: five more, written after 2.2 was final; fresh4/: five more,
    written after 2.3 was final; fresh5/, fresh6/, fresh7/: five more each, written while 2.5 / 2.6 / 2.7 were tuned;
    fresh8/: five more, written after 2.7 was frozen; explain/: five more, 2.8 round — factual answers about harmful
    topics vs refusals that only explain the harm, 160 per language; fresh9/: five more, written after 2.8 was final;
    fresh10/: five more (six sessions: the Japanese writer was restarted), written while 2.9 was tuned, read after
    2.9.0 was frozen; fresh11/: six more (two English files: en.jsonl in the style of 2023 chat models, en2.jsonl),
    written after 2.9 was final, the hard behaviours weighted up), written by
    people who never saw the patterns or the model.
    half "dev" (odd ids: may be read and fit on), "test" (even ids: never read, never fit on — the
    figure to report) or "all". Sources are "<set>-dev" / "<set>-test"."""
    if half not in ("dev", "test", "all"):
        raise ValueError(f"half: dev, test or all, not {half!r}")
    name = name or Path(d).name
    out = []
    for path in sorted(Path(d).glob("*.jsonl")):
        for no, r in _jsonl(path):
            for k in ("lang", "response", "label"):
                if k not in r:
                    raise DetectInputError(f"{path}:{no}: missing field {k!r}")
            odd = int(str(r.get("id", "0")).rsplit("-", 1)[-1]) % 2 == 1
            if half != "all" and odd != (half == "dev"):
                continue
            out.append({"lang": r["lang"], "source": f"{name}-{'dev' if odd else 'test'}", "prompt": r.get("prompt"),
                        "response": r["response"], "label": int(bool(r["label"])), "id": r.get("id"),
                        "behaviour": r.get("behaviour")})
    return out


TRAINED_SETS = ("fresh", "fresh2", "explain")  # their dev halves train the model (their test halves never); 2.8: explain
TRAINED_WHOLE = ("fresh3", "fresh4", "fresh5", "fresh6")  # 2.4: all of fresh3 trains the model (2.2/2.3's wholly unseen set); 2.5: fresh4 too (2.4's); 2.6: fresh5 (2.5's); 2.7: fresh6 (2.6's)
HELD_OUT_WHOLE = ("fresh7", "fresh8", "fresh9", "fresh10", "fresh11")  # written while / after 2.7 was tuned (fresh9: after 2.8 was final; fresh10: while 2.9 was tuned, read after it was frozen; fresh11: after 2.9 was final, hard cases weighted), by authors who never saw it: the wholly unseen sets, never read by the trainer


def load_independent(half: str = "test", sets: tuple = INDEPENDENT_SETS) -> list[dict]:
    """The `half` of each independent set in `sets` (a set that is absent contributes nothing)."""
    return [r for name in sets for r in load_fresh(half, LABELLED_DIR.parent / name, name)]


def source_group(source: str) -> str:
    """xstest-<model> -> xstest, polyrefuse-<setting> -> polyrefuse, fresh3-dev / fresh3-test -> fresh3 (a set
    trained on whole is one source group); cases / own-tune / fresh-dev stay."""
    return source.split("-")[0] if source.startswith(("xstest", "polyrefuse") + TRAINED_WHOLE) else source
