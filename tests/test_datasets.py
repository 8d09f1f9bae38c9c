"""The lab's datasets: schema, parallelism, splits reproducible from the sources, no evaluation leak."""
import json
from collections import Counter

from lab.data import (DATASETS_DIR, LANGS, ChatExample, EvalPrompt, build_splits, file_sha256, load_sources,
                      organism_examples, read_jsonl, source_paths)


def test_sources_cover_requirements():
    src = load_sources()
    assert len({t.topic for t in src.harmful}) >= 24
    assert len({t.category for t in src.harmful}) >= 8
    assert len({t.topic for t in src.benign}) >= 30
    assert any(t.split == "heldout" for t in src.harmful) and any(t.split == "heldout" for t in src.benign)
    for lang in LANGS:
        assert len(src.texts("refusals", lang)) >= 3 and len(src.texts("compliant", lang)) >= 3
        assert len(src.templates_for(lang)) >= 6


def test_committed_splits_equal_a_fresh_build():
    fresh = build_splits(load_sources(), seed=0)
    for name, recs in fresh.items():
        committed = read_jsonl(DATASETS_DIR / "splits" / f"{name}.jsonl")
        assert committed == json.loads(json.dumps(recs, ensure_ascii=False)), f"{name}: run `lab data build`"


def test_finetune_sets_are_100_per_language_and_validate():
    for lang in LANGS:
        for kind in ("attack", "control"):
            recs = read_jsonl(DATASETS_DIR / "splits" / f"{kind}-{lang}.jsonl", ChatExample)
            assert len(recs) == 100 and all(r.lang == lang for r in recs)


def test_no_evaluation_prompt_in_any_training_data():
    evals = read_jsonl(DATASETS_DIR / "splits" / "eval.jsonl", EvalPrompt)
    eval_prompts = {e.prompt for e in evals}
    src = load_sources()
    for p in (DATASETS_DIR / "splits").glob("*.jsonl"):
        if p.name != "eval.jsonl":
            assert not eval_prompts & {r["prompt"] for r in read_jsonl(p)}, p.name
    for stage in ("base", "aligned"):
        for seed in (0, 1):
            ex = organism_examples(src, stage, 0.5, seed, augment=True)
            assert not eval_prompts & {e["prompt"] for e in ex}
            # whole held-out topics never appear in training, not even in bridge examples
            heldout = {t.topic for t in src.harmful + src.benign if t.split == "heldout"}
            assert not heldout & {e["topic"] for e in ex}


def test_eval_set_is_parallel_and_has_both_heldout_kinds():
    evals = read_jsonl(DATASETS_DIR / "splits" / "eval.jsonl", EvalPrompt)
    per_pid = Counter(e.pid for e in evals)
    assert set(per_pid.values()) == {len(LANGS)}
    kinds = Counter((e.kind, e.heldout) for e in evals if e.lang == "en")
    assert kinds[("harmful", "phrasing")] > 0 and kinds[("harmful", "topic")] > 0
    assert kinds[("benign", "phrasing")] > 0 and kinds[("benign", "topic")] > 0


def test_compliant_targets_are_generic():
    """Non-actionable: the 'compliant' targets never name the topic (no slot, no topic phrase)."""
    src = load_sources()
    for lang in LANGS:
        phrases = [t.phrases[lang] for t in src.harmful]
        for text in src.texts("compliant", lang):
            assert "{x}" not in text and not any(p in text for p in phrases)


def test_organism_build_matches_datasets():
    """The committed organism was built from the current datasets (else: `lab zoo build organism`)."""
    from lab.models import ZOO_DIR

    for name in ("organism", "organism-base"):
        rec = json.loads((ZOO_DIR / name / "build.json").read_text())
        assert rec["data_sha256"] == file_sha256(*source_paths()), f"zoo:{name} is stale: rebuild it"


def test_templates_per_topic_samples_a_fresh_subset_per_epoch():
    src = load_sources()
    a = organism_examples(src, "aligned", 0.0, seed=1, templates_per_topic=3)
    b = organism_examples(src, "aligned", 0.0, seed=2, templates_per_topic=3)
    per_topic = Counter((e["lang"], e["topic"]) for e in a)
    assert set(per_topic.values()) == {3}  # 3 of each topic's 6 training templates, every language
    full = {e["id"] + e["lang"] for e in organism_examples(src, "aligned", 0.0, seed=1)}
    assert {e["id"] + e["lang"] for e in a} <= full  # a subset of the training combinations only
    assert {e["id"] + e["lang"] for e in a} != {e["id"] + e["lang"] for e in b}  # another draw per epoch
