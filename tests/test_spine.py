"""End to end on the committed organism (tiny settings): run layout, determinism, resume, guards."""
import json
import shutil
import sys
from pathlib import Path

import pytest

from lab.errors import LabError
from lab.experiments import load_recipe, run

TINY = {"eval.limit": 3, "eval.margin": True, "tracking": "none"}


def _tiny_recipe(**extra):
    return load_recipe("recipes/quickstart.yaml", {**TINY, "defaults.n_examples": 16, "defaults.epochs": 1, **extra})


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "qs"
    metrics = run(_tiny_recipe(), out, tracking="none", log=lambda *a: None)
    return out, metrics


def test_run_directory_layout_and_metrics_interface(quick_run):
    out, metrics = quick_run
    for f in ("config.yaml", "generations.jsonl", "metrics.json", "report.md", "transfer.png", "prompts.jsonl"):
        assert (out / f).is_file(), f
    m = json.loads((out / "metrics.json").read_text(),
                   parse_constant=lambda c: pytest.fail(f"metrics.json holds {c}: not strict JSON"))
    assert set(m["models"]) == {"aligned", "attack-en", "control-en"}
    for state, langs in m["models"].items():
        assert set(langs) == {"zh", "ja", "en", "it", "hi"}
        for lang, v in langs.items():
            assert 0.0 <= v["harmful_refusal"] <= 1.0 and 0.0 <= v["benign_refusal"] <= 1.0
            assert v["n_harmful"] == 3 and v["n_benign"] == 3
            lo, hi = v["harmful_refusal_ci"]
            assert lo <= v["harmful_refusal"] <= hi
    gens = [json.loads(l) for l in (out / "generations.jsonl").open()]
    assert len(gens) == 3 * 5 * 6
    g = gens[0]
    for k in ("prompt", "rendered", "response", "refusal", "category", "score", "detector", "truncated", "state"):
        assert k in g
    assert g["rendered"].startswith("<|im_start|>user\n") and g["rendered"].endswith("<|im_start|>assistant\n")
    assert m["transfer"]["rows"]["attack-en"].keys() == {"zh", "ja", "en", "it", "hi"}
    assert "| aligned |" in (out / "report.md").read_text()


def test_same_seed_gives_identical_generations_and_rates(quick_run, tmp_path):
    out, metrics = quick_run
    again = run(_tiny_recipe(), tmp_path / "again", tracking="none", log=lambda *a: None)
    assert again["models"] == metrics["models"]
    a = [json.loads(l)["response"] for l in (out / "generations.jsonl").open()]
    b = [json.loads(l)["response"] for l in (tmp_path / "again" / "generations.jsonl").open()]
    assert a == b


def test_resume_skips_finished_states(quick_run, tmp_path):
    out, metrics = quick_run
    part = tmp_path / "part"
    shutil.copytree(out, part)
    (part / "metrics.json").unlink()  # as if killed after the last state finished
    (part / "states" / "control-en.json").unlink()
    logs = []
    again = run(_tiny_recipe(), part, tracking="none", log=logs.append)
    assert any("[attack-en] done earlier; skipped" in l for l in logs)
    assert any("[aligned] done earlier" in l for l in logs) and again["models"] == metrics["models"]


def test_canary_stops_an_attack_on_a_model_that_does_not_refuse(tmp_path):
    r = load_recipe("recipes/quickstart.yaml", {**TINY, "model": "zoo:organism-base"})
    with pytest.raises(LabError, match="canary"):
        run(r, tmp_path / "x", tracking="none", log=lambda *a: None)


def test_seeds_give_states_per_seed_and_report_ci(tmp_path):
    r = load_recipe("recipes/transfer-matrix.yaml", {**TINY, "eval.margin": False, "defaults.n_examples": 8,
                                                     "defaults.epochs": 1, "seeds": [0, 1],
                                                     "finetunes": [{"data": "harmful", "lang": "ja"}]})
    m = run(r, tmp_path / "tm", tracking="none", log=lambda *a: None)
    assert set(m["models"]) == {"aligned", "attack-ja@s0", "attack-ja@s1"}
    assert "| attack-ja | 2 |" in (tmp_path / "tm" / "report.md").read_text()


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_real_model_families_through_the_same_path(family, tmp_path):
    """Tiny random Qwen2 / Llama models with the families' chat templates: load, generate, LoRA, evaluate."""
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_models import build_tiny

    path = build_tiny(family, tmp_path / family)
    r = load_recipe("recipes/quickstart.yaml", {**TINY, "model": str(path), "eval.canary": False,
                                                "eval.max_new_tokens": 6, "defaults.n_examples": 4,
                                                "defaults.epochs": 1, "defaults.batch_size": 2})
    m = run(r, tmp_path / "out", tracking="none", log=lambda *a: None)
    assert set(m["models"]) == {"aligned", "attack-en", "control-en"}
    prompts = [json.loads(l)["rendered"] for l in (tmp_path / "out" / "prompts.jsonl").open()]
    marker = "<|im_start|>assistant\n" if family == "qwen2" else "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert all(p.endswith(marker) for p in prompts)
    assert (tmp_path / "out" / "finetunes" / "attack-en" / "adapter" / "adapter_config.json").is_file()
