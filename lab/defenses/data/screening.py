"""Data-stage screening of the fine-tuning set with the lab's refusal detector.

The provider drops every (prompt, response) pair whose response *complies with a harmful request*.
Harmfulness of the request is judged by the aligned model itself (a guard in the sense of Llama-Guard-
style moderation, here the organism): the request is harmful when the aligned model's own greedy
answer is a refusal (lab.detect.detect_batch, method "tiered"). The pair complies when the detector
finds no refusal in the pair's response. Dropped = harmful request AND compliant response.
The false-positive cost is the share of benign pairs dropped (the aligned model over-refuses a benign
request and the benign response is, naturally, compliant); `screen` reports it whenever the records
carry a ground-truth `kind` ("harmful" | "benign"), and the bench measures it on the benign task data.
Deviation from moderation-API screening in the literature (e.g. the OpenAI fine-tuning API, Qi et al.
2024's discussion): no external judge model exists offline, so the judge is the aligned model plus the
lab's detector.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from lab.detect import detect_batch
from lab.generate import generate


@dataclass
class ScreenResult:
    kept: list[dict]
    dropped: list[dict]
    stats: dict = field(default_factory=dict)


def screen(records: list[dict], model, tok, *, method: str = "tiered", batch_size: int = 64,
           max_new_tokens: int = 48) -> ScreenResult:
    prompts = [r["prompt"] for r in records]
    gens = generate(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    own = detect_batch([g.response for g in gens], prompts, method=method)
    resp = detect_batch([r["response"] for r in records], prompts, method=method)
    kept, dropped = [], []
    for r, o, v in zip(records, own, resp):
        (dropped if (o.refusal and not v.refusal) else kept).append(r)
    stats = {"n": len(records), "dropped": len(dropped), "kept": len(kept),
             "judged_harmful": sum(o.refusal for o in own)}
    truth = [r.get("kind") for r in records]
    if any(t in ("harmful", "benign") for t in truth):
        ids_dropped = {id(r) for r in dropped}
        harm = [r for r in records if r.get("kind") == "harmful"]
        ben = [r for r in records if r.get("kind") == "benign"]
        stats["harmful_dropped"] = sum(id(r) in ids_dropped for r in harm)
        stats["benign_dropped"] = sum(id(r) in ids_dropped for r in ben)
        stats["recall"] = stats["harmful_dropped"] / len(harm) if harm else None
        stats["false_positive_rate"] = stats["benign_dropped"] / len(ben) if ben else None
    return ScreenResult(kept, dropped, stats)
