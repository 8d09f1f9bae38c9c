"""Safety-data mixing (Bianchi et al., ICLR 2024, "Safety-Tuned LLaMAs: Lessons From Improving the Safety
of Large Language Models that Follow Instructions").

The defender adds a few safety examples (harmful prompt → refusal) to the user's fine-tuning set; the
paper shows a few hundred (3 % of the data) restore much of the safety lost in instruction tuning.
Here: `k` refusal examples per language (default 3, i.e. 15 for the lab's five languages; 13 % of a
100-example set) from datasets/splits/safety-<lang>.jsonl, shuffled into the user's data with a seed.
The paper's safety data are English; we draw from every language (multilingual mixing) — `langs` can
restrict it to the attack language or English.
"""
from __future__ import annotations

import random

from lab.data import LANGS
from lab.defenses.common import safety_records


def mix_safety(user_records: list[dict], k: int = 3, langs=LANGS, seed: int = 0) -> list[dict]:
    extra = safety_records(langs, k)
    out = list(user_records) + [{"prompt": r["prompt"], "response": r["response"]} for r in extra]
    random.Random(seed).shuffle(out)
    return out
