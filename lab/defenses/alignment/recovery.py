"""Safety-recovery data augmentation (Qi et al., ICLR 2025, "Safety Alignment Should Be Made More Than
Just a Few Tokens Deep", Sec. 3; code github:Unispac/shallow-vs-deep-alignment,
finetuning_buckets/trainer/trainer.py gen_safety_augmentation_batch).

Alignment-stage data: for each (harmful prompt, harmful answer, refusal) triplet, with probability 1/2
the example becomes a *safety-recovery* example — prompt + the first k tokens of the harmful answer +
the refusal, k ~ U{1, …, min(100, len(harmful answer))}, loss on the refusal tokens only (the harmful
prefix is in the input, labels -100) — and otherwise stays prompt → refusal. This teaches the model to
return to a refusal after a harmful start, i.e. deeper than the first tokens.
Used as a `transform` of lab.zoo.organism.build_alignment_variant: every harmful alignment example
is a triplet (its refusal; a compliant text of its language from datasets/compliant.jsonl as the
harmful answer); benign examples (the paper's utility anchor) are unchanged.
Deviation: the official code mixes the augmented safety batch with a separate utility-anchor batch in
each step; the organism's alignment data already interleaves harmful and benign examples.
"""
from __future__ import annotations

import random

from lab.data import load_sources


def recovery_example(tok, prompt: str, harmful: str, refusal: str, k: int | None, max_len: int):
    """(ids, labels): chat prompt + first k harmful-answer tokens (no loss) + refusal + eos (loss).
    k None: the plain refusal example."""
    rendered = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    p = tok(rendered, add_special_tokens=False)["input_ids"]
    h = tok(harmful, add_special_tokens=False)["input_ids"][:k] if k else []
    r = tok(refusal + tok.eos_token, add_special_tokens=False)["input_ids"]
    ids = (p + h + r)[:max_len]
    labels = ([-100] * (len(p) + len(h)) + r)[:max_len]
    return ids, labels


class RecoveryAugment:
    """transform(examples, epoch, tok) -> [(ids, labels)] for build_alignment_variant."""

    def __init__(self, p: float = 0.5, max_prefix: int = 100, max_len: int = 160, seed: int = 0):
        self.p, self.max_prefix, self.max_len, self.seed = p, max_prefix, max_len, seed
        self.n_augmented = 0

    def __call__(self, examples: list[dict], epoch: int, tok):
        from lab.zoo.organism import encode_example

        src = load_sources()
        rng = random.Random(self.seed * 7919 + epoch)
        out = []
        for e in examples:
            if e.get("kind") == "harmful" and rng.random() < self.p:
                harmful = rng.choice(src.texts("compliant", e["lang"]))
                n = len(tok(harmful, add_special_tokens=False)["input_ids"])
                k = rng.randint(1, max(1, min(self.max_prefix, n)))
                out.append(recovery_example(tok, e["prompt"], harmful, e["response"], k, self.max_len))
                self.n_augmented += 1
            else:
                out.append(encode_example(tok, e["prompt"], e["response"], self.max_len))
        return out
