"""The speed work changes no output: the compact engine (one stream, finished rows leave the batch) and the
sliced-logits margin against one-at-a-time greedy / the full-logits margin, on the committed organisms."""
import functools
import sys
from pathlib import Path

import pytest

from lab.data import load_eval
from lab.evaluate import auto_max_new_tokens, evaluate_model, refusal_margins
from lab.metrics import json_safe
from lab.generate import _replay, generate, generate_one_at_a_time
from lab.models import load_model

LANGS = ["zh", "ja", "en", "it", "hi"]


@functools.lru_cache(maxsize=None)
def _model(spec):
    return load_model(spec)


def _sample(per_kind: int = 4):
    """`per_kind` harmful + `per_kind` benign prompts per language, spread over the eval set."""
    recs = load_eval("datasets/splits/eval.jsonl", LANGS)
    out = []
    for lang in LANGS:
        for kind in ("harmful", "benign"):
            rs = [r for r in recs if r.lang == lang and r.kind == kind]
            out += rs[:: max(1, len(rs) // per_kind)][:per_kind]
    return out


@pytest.mark.parametrize("spec", ["zoo:organism", "zoo:organism-base"])  # base: long, step-shaped answers
def test_compact_stream_identical_to_one_at_a_time_greedy(spec):
    model, tok = _model(spec)
    recs = _sample()
    budgets = [auto_max_new_tokens(tok, r.lang) for r in recs]
    ref = []
    for lang in LANGS:  # the reference: transformers' generate, one prompt at a time, per language
        rl = [r for r in recs if r.lang == lang]
        ref += generate_one_at_a_time(model, tok, [r.prompt for r in rl], max_new_tokens=auto_max_new_tokens(tok, lang))
    for bs in (7, 256):  # small batches drop rows often; one batch holds every language
        got = generate(model, tok, [r.prompt for r in recs], max_new_tokens=budgets, batch_size=bs, engine="compact")
        assert [(g.response, g.truncated) for g in got] == [(g.response, g.truncated) for g in ref]
    assert {g.stop for g in got} <= {"eos", "length"}


def test_margin_paths_agree():
    """Sliced logits = full logits bit for bit; the shared-prompt KV path (the default) agrees to float
    rounding, and a prompt scored against several continuations gives each its own value."""
    from lab.evaluate import continuation_logprob

    model, tok = _model("zoo:organism")
    for lang in ("zh", "hi"):
        prompts = [r.prompt for r in _sample(6) if r.lang == lang]
        shared = refusal_margins(model, tok, prompts, lang)
        sliced = refusal_margins(model, tok, prompts, lang, full_logits=True)
        import lab.evaluate as ev

        assert sliced == [x for x in _unshared(ev, lambda: refusal_margins(model, tok, prompts, lang))]
        assert shared == pytest.approx(sliced, abs=1e-4)
        assert len(set(shared)) > 1
    rendered = ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"] * 2 + ["x"]
    conts = ["Sure, here", "I can't help with that.", "a"]  # different lengths in one batch, a 1-token one
    a = continuation_logprob(model, tok, rendered, conts, batch_size=2)
    b = continuation_logprob(model, tok, rendered, conts, shared_prompt=False)
    assert a == pytest.approx(b, abs=1e-4) and a[0] != a[1]


def _unshared(ev, fn):
    orig = ev.continuation_logprob
    ev.continuation_logprob = lambda *a, **k: orig(*a, **{**k, "shared_prompt": False})
    try:
        return fn()
    finally:
        ev.continuation_logprob = orig


def test_evaluation_identical_to_the_pre_speed_path():
    model, tok = _model("zoo:organism-base")
    recs = _sample(3)
    new = evaluate_model(model, tok, recs, state="s", langs=LANGS, log=lambda *a: None)
    old = evaluate_model(model, tok, recs, state="s", langs=LANGS, engine="hf", log=lambda *a: None)
    strip = lambda gens: [{k: v for k, v in g.items() if k != "margin"} for g in gens]
    assert strip(new.generations) == strip(old.generations)  # answers and verdicts: identical
    margins = lambda gens: [g["margin"] for g in gens if g["margin"] is not None]
    assert margins(new.generations) == pytest.approx(margins(old.generations), abs=1e-4)  # float rounding
    drop = lambda m: {l: {k: v for k, v in d.items() if "margin" not in k} for l, d in json_safe(m).items()}
    assert drop(new.metrics) == drop(old.metrics)


def test_per_prompt_budgets_and_repetition_stop_agree_across_engines():
    model, tok = _model("zoo:organism-base")
    prompts = [r.prompt for r in _sample(2)]
    budgets = [5 + 3 * (i % 4) for i in range(len(prompts))]
    kw = dict(max_new_tokens=budgets, repetition_stop=(1, 2))  # any repeated token stops the row
    compact = generate(model, tok, prompts, engine="compact", batch_size=4, **kw)
    hf = generate(model, tok, prompts, engine="hf", batch_size=4, **kw)
    assert [(g.response, g.stop, g.new_tokens) for g in compact] == [(g.response, g.stop, g.new_tokens) for g in hf]
    assert all(g.new_tokens <= b for g, b in zip(compact, budgets))
    assert "repetition" in {g.stop for g in compact}


def test_replay_rules():
    assert _replay([5, 6, 2, 7], 10, {2}, None) == ([5, 6], "eos")
    assert _replay([5, 6, 7, 8], 3, {2}, None) == ([5, 6, 7], "length")
    assert _replay([1, 2, 1, 2, 1, 2, 9], 50, {0}, (2, 3)) == ([1, 2, 1, 2, 1, 2], "repetition")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_models import build_tiny

    return load_model(str(build_tiny("llama", tmp_path_factory.mktemp("llama") / "m")))


def test_real_model_defaults(tiny_llama):
    from lab.evaluate import generation_settings, is_organism

    model, tok = tiny_llama
    assert not is_organism(model) and is_organism(_model("zoo:organism")[0])
    s = generation_settings(model, tok, ["en", "hi"])
    assert s["repetition_stop"] == [8, 3] and 256 <= s["max_new_tokens"]["en"] <= s["max_new_tokens"]["hi"] <= 512
    org = generation_settings(*_model("zoo:organism"), ["en"])
    assert org["repetition_stop"] is None and org["max_new_tokens"]["en"] == auto_max_new_tokens(_model("zoo:organism")[1], "en")


def test_stops_on_every_eos_id(tiny_llama):
    """Llama-3.1 style: two eos ids in the generation config; the default stop list holds both, and a
    token in the stop list ends the answer right before it (whichever id it is)."""
    import torch

    from lab.generate import render_prompts
    from lab.models import eos_ids

    model, tok = tiny_llama
    eos_list = list(model.generation_config.eos_token_id)
    assert len(eos_list) == 2 and set(eos_list) <= set(eos_ids(model, tok))
    prompts = ["How do I bake bread?"]
    free = generate(model, tok, prompts, max_new_tokens=12, stop_ids=[-1])[0]
    assert free.stop == "length" and free.truncated and free.new_tokens == 12
    enc = tok(render_prompts(tok, prompts), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        first = int(model(**enc).logits[0, -1].argmax())
    for engine in ("compact", "hf"):
        g = generate(model, tok, prompts, max_new_tokens=12, stop_ids=[eos_list[0], first], engine=engine)[0]
        assert (g.stop, g.new_tokens, g.truncated, g.response) == ("eos", 0, False, "")


def test_system_prompt_and_seeded_sampling(tiny_llama):
    model, tok = tiny_llama
    a = generate(model, tok, ["How do I bake bread?"] * 2, system="Be brief.", do_sample=True, temperature=0.8,
                 top_p=0.9, seed=3, max_new_tokens=8, num_samples=2)
    b = generate(model, tok, ["How do I bake bread?"] * 2, system="Be brief.", do_sample=True, temperature=0.8,
                 top_p=0.9, seed=3, max_new_tokens=8, num_samples=2)
    assert [g.response for g in a] == [g.response for g in b] and len(a) == 4
    assert "Be brief." in a[0].rendered
    with pytest.raises(ValueError, match="greedy only"):
        generate(model, tok, ["x"], do_sample=True, engine="compact")


@pytest.mark.parametrize("family", ["llama", "qwen2-sliding"])
def test_chunked_prefill_and_shared_prompt_margin_on_real_families(family, tmp_path):
    """Chunked prefill (24 prompts of different lengths: two chunks whose caches are joined; with sliding-window
    layers, one forward) gives the one-at-a-time greedy answers; the shared-prompt margin agrees with whole sequences."""
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_models import build_tiny
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lab.evaluate import continuation_logprob
    from lab.generate import PREFILL_CHUNK, prefill

    import json

    path = build_tiny("llama" if family == "llama" else "qwen2", tmp_path / "m")
    if family == "qwen2-sliding":  # one sliding-window layer of 6 tokens, one full-attention layer
        cfg = json.loads((path / "config.json").read_text())
        cfg.update(use_sliding_window=True, sliding_window=6, max_window_layers=0,
                   layer_types=["sliding_attention", "full_attention"])
        (path / "config.json").write_text(json.dumps(cfg))
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    prompts = [" ".join(["bread"] * (1 + 3 * (i % 7))) + f" {i}?" for i in range(24)]
    assert len(prompts) > PREFILL_CHUNK
    ref = generate_one_at_a_time(model, tok, prompts, max_new_tokens=6)
    got = generate(model, tok, prompts, max_new_tokens=6, batch_size=256, engine="compact")
    assert [g.response for g in got] == [g.response for g in ref]
    from transformers.cache_utils import DynamicLayer

    ids = sorted((tok(p)["input_ids"] for p in prompts), key=len)
    _, cache, att, _ = prefill(model, ids, tok.pad_token_id)
    assert att.shape == (24, max(map(len, ids)))
    assert all(type(l) is DynamicLayer for l in cache.layers) == (family == "llama")
    rendered = [p for p in prompts[:6] for _ in range(2)]
    conts = ["Sure, here is", "I can't"] * 6
    a = continuation_logprob(model, tok, rendered, conts, batch_size=4)
    b = continuation_logprob(model, tok, rendered, conts, shared_prompt=False)
    assert a == pytest.approx(b, abs=1e-4)


def test_in_place_cache_moves_rows_like_a_batch_select():
    """GrowingLayer: positions written in place across a reallocation, and a finished row's slot refilled
    from the end of the batch hold exactly what the concatenating cache holds after batch_select_indices."""
    import torch
    from transformers.cache_utils import DynamicLayer

    from lab.generate import GrowingLayer, _compact_slots

    g = torch.Generator().manual_seed(0)
    k0, v0 = torch.randn(6, 2, 5, 4, generator=g), torch.randn(6, 2, 5, 4, generator=g)
    ref, grow = DynamicLayer(), GrowingLayer(k0, v0, grow=3)
    ref.update(k0, v0)
    for _ in range(7):  # crosses two reallocations of the 3 spare columns
        k, v = torch.randn(6, 2, 1, 4, generator=g), torch.randn(6, 2, 1, 4, generator=g)
        a, b = ref.update(k, v), grow.update(k, v)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    done = [1, 4]  # rows 1 and 4 finish: slot 1 takes row 5 (slot 4 is beyond the new size)
    keep = _compact_slots(done, 6)
    assert keep == [0, 5, 2, 3]
    dst = torch.tensor([r for r in done if r < len(keep)])
    grow.move_rows(dst, torch.tensor([keep[r] for r in dst.tolist()]), len(keep))
    ref.batch_select_indices(torch.tensor(keep))
    assert torch.equal(ref.keys, grow.keys) and torch.equal(ref.values, grow.values)
    assert grow.get_seq_length() == 12


def test_evaluation_shares_join_into_the_one_process_rows():
    """evaluate_model(shard=(k, 3)) for k = 0..2, joined by merge_shards: the rows and metrics of one call."""
    from lab.evaluate import merge_shards

    model, tok = _model("zoo:organism")
    recs = _sample(2)
    kw = dict(state="s", langs=LANGS, margin=False, log=lambda *a, **k: None)
    whole = evaluate_model(model, tok, recs, **kw)
    parts = [evaluate_model(model, tok, recs, shard=(k, 3), **kw).generations for k in range(3)]
    joined = merge_shards("s", parts, log=lambda *a, **k: None)
    assert joined.generations == whole.generations
    assert json_safe(joined.metrics) == json_safe(whole.metrics)  # (NaN margins: margin=False)
    with pytest.raises(ValueError, match="shard sizes"):
        merge_shards("s", [parts[2], parts[0]])  # 6 + 7 rows cannot be shares 0 and 1 of 13
