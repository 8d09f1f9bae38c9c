"""kind: localization end to end on the organism at tiny settings: masks cached, SIL states, mask checks."""
import json

import pytest

from lab.experiments import load_recipe, run

TINY = """kind: localization
name: loc-sil
tracking: none
eval: {limit: 2, langs: [en, zh], margin: false, canary: false}
attribution: {method: wanda, n_examples: 4, per_language: false, q: 5, p: 5}
attack: {n_examples: 8, epochs: 1, batch_size: 8}
interventions: [prune, sil, actsvd]
actsvd: {safety_rank: 0.05, utility_rank: 0.5}
sil: {langs: [en, zh], k: 20, test_lang: en}
"""


@pytest.fixture(scope="module")
def sil_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("loc")
    (d / "r.yaml").write_text(TINY)
    m = run(load_recipe(d / "r.yaml"), d / "out", tracking="none", log=lambda *a, **k: None)
    return d / "out", m


def test_states_and_mask_checks(sil_run):
    out, m = sil_run
    assert set(m["models"]) == {"aligned", "base", "pruned-safety", "pruned-random", "actsvd-removed", "sil-masked-attack",
                                "sil-masked-attack-random", "sil-frozen-attack", "sil-frozen-attack-random"}
    # masked training never moved a weight it was told to keep (0 for every masked / frozen state)
    assert all(v == 0 for v in m["mask_checks"]["changed_outside_mask"].values())
    assert set(m["mask_checks"]["changed_outside_mask"]) >= {"sil-masked-attack", "sil-frozen-attack"}
    assert m["actsvd"]["matrices"] > 0 and "rank-0.05 safety output subspace" in m["states"]["actsvd-removed"]


def test_sil_masks_have_the_asked_size_and_an_overlap_table(sil_run):
    out, m = sil_run
    s = m["sil"]
    assert set(s["fraction"]) == {"en", "zh"} and all(0.19 < f < 0.21 for f in s["fraction"].values())
    pair = s["overlap"]["pairs"][0]
    assert {pair["a"], pair["b"]} == {"en", "zh"} and 0 <= pair["jaccard"] <= 1 and pair["random_jaccard"] > 0
    assert (out / "masks" / "sil-en.safetensors").is_file() and "SIL" in (out / "report.md").read_text()


def test_masks_are_reused_on_resume(sil_run, tmp_path):
    import shutil

    out, m = sil_run
    part = tmp_path / "part"
    shutil.copytree(out, part)
    (part / "metrics.json").unlink()
    (part / "states" / "sil-frozen-attack-random.json").unlink()
    before = (part / "masks" / "done.json").stat().st_mtime_ns
    again = run(load_recipe(out.parent / "r.yaml"), part, tracking="none", log=lambda *a, **k: None)
    assert (part / "masks" / "done.json").stat().st_mtime_ns == before and again["models"] == m["models"]
    assert json.loads((part / "states" / "config.json").read_text())["sil"]["k"] == 20
