"""lab.eval_cache: a state's evaluation stored by content, atomically; hits equal fresh evaluations."""
import copy
import functools

import pytest
import torch

from lab import eval_cache
from lab.data import load_eval
from lab.eval_cache import EvalCache, eval_key, model_fingerprint
from lab.evaluate import evaluate_model, generation_settings
from lab.metrics import json_safe
from lab.models import load_model

LANGS = ["en", "hi"]


@functools.lru_cache(maxsize=None)
def _organism():
    return load_model("zoo:organism")


def _recs():
    return load_eval("datasets/splits/eval.jsonl", LANGS, limit=2)


def _key(model, tok, recs, **kw):
    settings = generation_settings(model, tok, LANGS, **kw)
    return eval_key(model, tok, recs, langs=LANGS, settings=settings, detector="tiered", margin=True)


def test_key_follows_content():
    model, tok = _organism()
    recs = _recs()
    k = _key(model, tok, recs)
    assert k == _key(copy.deepcopy(model), tok, recs)  # same weights, another object
    moved = copy.deepcopy(model)
    with torch.no_grad():
        next(moved.parameters()).view(-1)[0] += 1e-6
    assert model_fingerprint(moved) != model_fingerprint(model)
    assert _key(moved, tok, recs) != k
    assert _key(model, tok, recs[:-1]) != k
    assert _key(model, tok, recs, max_new_tokens=7) != k
    assert _key(model, tok, recs, system="Be brief.") != k
    assert _key(model, tok, recs, do_sample=True, seed=1) != _key(model, tok, recs, do_sample=True, seed=2)
    settings = generation_settings(model, tok, LANGS)
    assert eval_key(model, tok, recs, langs=LANGS, settings=settings, detector="substring", margin=True) != k
    assert eval_key(model, tok, recs, langs=LANGS, settings=settings, detector="tiered", margin=False) != k


def test_hit_equals_fresh_evaluation_and_skips_generation(tmp_path, monkeypatch):
    model, tok = _organism()
    recs = _recs()
    fresh = evaluate_model(model, tok, recs, state="aligned", langs=LANGS, cache=tmp_path, log=lambda *a: None)
    files = list(tmp_path.rglob("*.json"))
    assert len(files) == 1 and not list(tmp_path.rglob("*.tmp*"))  # atomic: no temp file left behind

    import lab.evaluate

    monkeypatch.setattr(lab.evaluate, "generate", lambda *a, **k: pytest.fail("generated on a cache hit"))
    logs = []
    hit = evaluate_model(model, tok, recs, state="aligned@s1", langs=LANGS, cache=EvalCache(tmp_path), log=logs.append)
    assert any("evaluation cached" in l for l in logs)
    assert hit.state == "aligned@s1" and {g["state"] for g in hit.generations} == {"aligned@s1"}
    assert [{**g, "state": "aligned"} for g in hit.generations] == fresh.generations
    assert json_safe(hit.metrics) == json_safe(fresh.metrics) and hit.loophole == fresh.loophole


def test_unreadable_entry_is_a_miss_and_env_sets_the_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE", str(tmp_path / "c"))
    store = eval_cache.as_cache(True)
    assert store.root == tmp_path / "c"
    key = "ab" + "0" * 62
    store.path(key).parent.mkdir(parents=True)
    store.path(key).write_text("{half a fi")
    assert store.get(key) is None
    store.put(key, [{"id": "x"}])
    assert store.get(key) == [{"id": "x"}] and store.get("ab" + "1" * 62) is None
