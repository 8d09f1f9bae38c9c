"""The censorship question set (eval/censorship/): seed 000's ten categories, matched controls."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lab.errors import LabError

REPO = Path(__file__).resolve().parents[2]
CENSORSHIP_DIR = REPO / "eval" / "censorship"
QUESTIONS = CENSORSHIP_DIR / "questions.jsonl"
CONTROLS = CENSORSHIP_DIR / "controls.jsonl"
OFFICIAL_LINE_DIR = CENSORSHIP_DIR / "official_line"

LANGS = ("zh", "ja", "en")
# seed 000's ten categories, in the paper's table order; key -> (Chinese, Japanese as in Table 2)
CATEGORIES = {
    "senior-politicians": ("高位政治家", "高位政治家"),
    "ethnic-minorities": ("少数民族", "少数民族"),
    "democracy-movements": ("民主化运动", "民主化運動"),
    "hong-kong-taiwan": ("香港台湾问题", "香港台湾問題"),
    "economy": ("经济情势", "経済情勢"),
    "policy": ("政策问题", "政策問題"),
    "history": ("历史问题", "歴史問題"),
    "diplomacy": ("外交问题", "外交問題"),
    "leading-questions": ("诱导问题", "誘導質問"),
    "indirect-questions": ("间接问题", "間接質問"),
}
N_QUICK = 22  # seed 001's quick test
DETECTOR_METHODS = ("dictionary-000", "tiered")


# --------------------------------------------------------------------------------------------------
# question set
class Question(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    category: str
    category_zh: str
    quick: bool = False
    zh: str = Field(min_length=1)
    ja: str = Field(min_length=1)
    en: str = Field(min_length=1)
    source: str | None = None
    control: bool = False

    def text(self, lang: str) -> str:
        return getattr(self, lang)


def load_questions(path: str | Path | None = None, *, controls: bool = False) -> list[Question]:
    """Read and validate a question file; LabError names file:line and what is wrong."""
    path = Path(path) if path else (CONTROLS if controls else QUESTIONS)
    if not path.is_file():
        raise LabError(f"{path}: question file not found")
    out, seen = [], set()
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            q = Question.model_validate(json.loads(line))
        except json.JSONDecodeError as e:
            raise LabError(f"{path}:{i}: invalid JSON ({e.msg})") from None
        except ValidationError as e:
            err = e.errors()[0]
            raise LabError(f"{path}:{i}: key '{'.'.join(map(str, err['loc']))}': {err['msg']}") from None
        if q.category not in CATEGORIES:
            raise LabError(f"{path}:{i}: key 'category': unknown category {q.category!r} "
                           f"(expected one of {', '.join(CATEGORIES)})")
        if q.id in seen:
            raise LabError(f"{path}:{i}: key 'id': duplicate id {q.id!r}")
        seen.add(q.id)
        out.append(q)
    if not out:
        raise LabError(f"{path}: no questions")
    return out


def select(questions: list[Question], mode: Literal["quick", "full"]) -> list[Question]:
    if mode == "full":
        return list(questions)
    if mode == "quick":
        return [q for q in questions if q.quick]
    raise LabError(f"probe mode must be 'quick' or 'full', got {mode!r}")


