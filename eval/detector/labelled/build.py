"""Build the detector's own labelled set from hand-written fragment pools (a taxonomy of behaviours).

    python eval/detector/labelled/build.py            # writes untuned.jsonl and tune.jsonl beside this file

Two pools per language, written by hand and kept apart:
  pools/untuned_<lang>.py  -- written FIRST, before any pattern or model was tuned; never tuned on
  pools/tune_<lang>.py     -- written afterwards; patterns and the learned component may be fit on it
Every answer is composed from one pool's fragments only, so the untuned split measures wordings the
detector has never seen. Labels follow the behaviour (refusal = the answer does not give what was
asked: direct / policy / empathetic / alternative-only / harm-explaining / deflection refusals;
not a refusal = plain compliance, disclaimer + answer, premise refutation, balanced answer, quoted
refusal words, harmful compliance, answers in another language). Deterministic (seeded).
Records: {id, lang, prompt, response, label, behaviour, split}.
"""
from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LANGS = ("zh", "ja", "en", "it", "hi")
REFUSAL = ("direct", "direct-explain", "policy", "empathetic", "alternative", "harm-only", "deflection",
           "long-refusal", "other-language-refusal")
ENGAGED = ("comply", "comply-short", "disclaimer-answer", "premise-refutation", "balanced", "quote",
           "harmful-comply", "other-language-comply")


def load_pool(split: str, lang: str) -> dict:
    p = HERE / "pools" / f"{split}_{lang}.py"
    spec = importlib.util.spec_from_file_location(f"pool_{split}_{lang}", p)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.POOL


def _j(pool: dict) -> str:
    return pool.get("join", " ")


def _bullets(items, rng, k=None, numbered=None) -> str:
    items = list(items)
    rng.shuffle(items)
    k = k or rng.randint(min(3, len(items)), len(items))
    numbered = rng.random() < 0.5 if numbered is None else numbered
    out = []
    for i, it in enumerate(items[:k], 1):
        out.append(f"{i}. {it}" if numbered else f"- {it}")
    return "\n".join(out)


def _refusal(b: str, pool: dict, rng: random.Random):
    prompt, topic = rng.choice(pool["harmful"])
    j = _j(pool)
    f = lambda s: s.format(t=topic)  # noqa: E731
    if b == "direct":
        r = f(rng.choice(pool["refuse"]))
    elif b == "direct-explain":
        r = f(rng.choice(pool["refuse"])) + j + f(rng.choice(pool["harm"]))
    elif b == "policy":
        r = f(rng.choice(pool["policy"])) + (j + f(rng.choice(pool["alt"])) if rng.random() < 0.5 else "")
    elif b == "empathetic":
        r = f(rng.choice(pool["empathy"])) + j + f(rng.choice(pool["refuse"])) + j + f(rng.choice(pool["alt"]))
    elif b == "alternative":
        r = (f(rng.choice(pool["refuse"])) + j + f(rng.choice(pool["alt"])) + "\n\n"
             + _bullets(pool["alt_list"], rng) + "\n\n" + f(rng.choice(pool["close"])))
    elif b == "harm-only":
        hs = rng.sample(pool["harm"], 2)
        r = f(hs[0]) + j + f(hs[1]) + j + f(rng.choice(pool["alt"]))
    elif b == "deflection":
        r = f(rng.choice(pool["deflect"]))
    elif b == "long-refusal":
        r = (f(rng.choice(pool["empathy"])) + j + f(rng.choice(pool["refuse"])) + "\n\n"
             + f(rng.choice(pool["harm"])) + j + f(rng.choice(pool["harm"])) + "\n\n"
             + f(rng.choice(pool["alt"])) + "\n\n" + _bullets(pool["alt_list"], rng) + "\n\n"
             + f(rng.choice(pool["close"])))
    else:
        raise ValueError(b)
    return prompt, r


def _engaged(b: str, pool: dict, rng: random.Random):
    j = _j(pool)
    if b in ("comply", "comply-short", "disclaimer-answer"):
        prompt, intro, items, outro = rng.choice(pool["benign"])
        if b == "comply-short":
            return prompt, intro
        body = intro + "\n\n" + _bullets(items, rng) + "\n\n" + outro
        if b == "comply":
            return prompt, (rng.choice(pool["comply_open"]) + j + body) if rng.random() < 0.6 else body
        return prompt, rng.choice(pool["disclaim"]) + j + body
    if b == "premise-refutation":
        prompt, opening, body = rng.choice(pool["premise"])
        return prompt, opening + j + body
    if b == "balanced":
        prompt, intro, pro_h, pros, con_h, cons, outro = rng.choice(pool["balanced"])
        return prompt, (f"{intro}\n\n**{pro_h}**\n" + _bullets(pros, rng, numbered=False) + f"\n\n**{con_h}**\n"
                        + _bullets(cons, rng, numbered=False) + "\n\n" + outro)
    if b == "quote":
        return rng.choice(pool["quote"])
    if b == "harmful-comply":
        return rng.choice(pool["harmful_comply"])
    raise ValueError(b)


def build(split: str, n_per_lang: int, seed: int) -> list[dict]:
    pools = {lang: load_pool(split, lang) for lang in LANGS}
    rows = []
    for li, lang in enumerate(LANGS):
        rng = random.Random(seed * 100 + li)
        pool = pools[lang]
        seen = set()
        half = n_per_lang // 2
        for label, behaviours in ((True, REFUSAL), (False, ENGAGED)):
            k = 0
            tries = 0
            while k < half and tries < 50 * half:
                tries += 1
                b = behaviours[k % len(behaviours)] if tries <= half else rng.choice(behaviours)
                if b.startswith("other-language"):
                    other = pools[rng.choice([x for x in LANGS if x != lang])]
                    inner = "direct-explain" if label else "comply"
                    prompt, _ = rng.choice(pool["harmful"] if label else pool["benign"])[:2]
                    _p, resp = (_refusal if label else _engaged)(inner, other, rng)
                else:
                    prompt, resp = (_refusal if label else _engaged)(b, pool, rng)
                if resp in seen:
                    continue
                seen.add(resp)
                rows.append({"id": f"{split}-{lang}-{len(seen):03d}", "lang": lang, "prompt": prompt,
                             "response": resp, "label": label, "behaviour": b, "split": split})
                k += 1
    return rows


def write(rows: list[dict], path: Path) -> None:
    sys.path.insert(0, str(HERE.parents[2]))
    from lab.data import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


if __name__ == "__main__":
    which = sys.argv[1:] or ["untuned", "tune"]
    sizes = {"untuned": (110, 11), "tune": (220, 22)}
    for split in which:
        n, seed = sizes[split]
        rows = build(split, n, seed)
        write(rows, HERE / f"{split}.jsonl")
        print(f"{split}: {len(rows)} rows")
