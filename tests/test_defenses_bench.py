"""kind: defense — plan, validation errors, and the summary/report from synthetic state records (fast)."""
from __future__ import annotations

import pytest

LANGS = ["zh", "ja", "en", "it", "hi"]


def _recipe(**kw):
    from lab.experiments.defense import DefenseRecipe

    return DefenseRecipe.model_validate({"kind": "defense", "name": "t", "tracking": "none", **kw})


def test_recipe_rejects_unknown_defense_and_missing_reference():
    with pytest.raises(Exception, match="unknown defenses"):
        _recipe(defenses=["none", "vaccinee"])
    with pytest.raises(Exception, match="must include 'none'"):
        _recipe(defenses=["lisa"])
    with pytest.raises(Exception, match="defense_params.lisa: unknown key 'rh'"):
        _recipe(defenses=["none", "lisa"], defense_params={"lisa": {"rh": 1}})


def test_plan_has_every_defense_threat_language_seed_grid_and_sweep_cell():
    from lab.experiments.defense import DefenseExperiment

    r = _recipe(defenses=["none", "safelora", "lisa", "vaccine"], seeds=[0, 1], attack_langs=["en", "ja"],
                p_sweep=[0, 0.1, 0.2], grid={"lr": [0.003, 0.01], "epochs": [5]}, eval={"limit": 2})
    exp = DefenseExperiment(r, log=lambda *a: None)
    exp.validate()
    st = exp.states()
    assert st[:2] == ["aligned", "build-vaccine"]
    trained = [s for s in st if s.startswith("ft-") and "-lr" not in s and "-p" not in s.split("@")[0][-6:]]
    assert len([s for s in st if s.startswith("ft-") and ("-harmful-" in s or "-faas-" in s) and "-lr" not in s]) == 3 * 2 * 2 * 2
    assert "ft-safelora-harmful-en@s0" not in st          # post-hoc defenses ride on the undefended fine-tune
    assert {s for s in st if "-p" in s and s.startswith("ft-none-p")} == {"ft-none-p0-en@s0", "ft-none-p0.2-en@s0",
                                                                           "ft-none-p0-ja@s0", "ft-none-p0.2-ja@s0"}
    assert len([s for s in st if "-lr0.01-ep5" in s]) == 3 * 2 and trained


def _entry(h, b, fa, sec, mib):
    return {"metrics": {l: {"harmful_refusal": h, "benign_refusal": b} for l in LANGS}, "fa": {"fa": fa},
            "seconds": sec, "peak_mib": mib}


def test_summary_costs_worst_case_and_report(tmp_path):
    from lab.defenses.report import summarize, write_report
    from lab.experiments.defense import DefenseExperiment

    r = _recipe(defenses=["none", "safelora", "lisa"], seeds=[0, 1], attack_langs=["en"], threats=["harmful", "faas"],
                grid={"lr": [0.003, 0.01], "epochs": [5]}, eval={"limit": 2})
    exp = DefenseExperiment(r, log=lambda *a: None)
    exp.validate()
    results = {"aligned": {"metrics": _entry(1, 0, 0, 0, 0)["metrics"], "fa": {"en": {"fa": 0.0}}}}
    for s, c in exp.plan.items():
        strong = c.get("lr") == 0.01
        if c["defense"] == "none":
            results[s] = {"cell": c, "defenses": {"none": _entry(0.1 if not strong else 0.0, 0, 0.9, 10, 100),
                                                  "safelora": _entry(0.5, 0.1, 0.8, 2, 5)}}
        else:
            results[s] = {"cell": c, "defenses": {"lisa": _entry(0.6 if not strong else 0.3, 0, 0.85, 14, 130)}}
    m = summarize(r, exp.plan, [], results)
    row = {(t["defense"], t["threat"]): t for t in m["table"]}
    assert row[("lisa", "harmful")]["extra_seconds"]["mean"] == pytest.approx(4)
    assert row[("lisa", "harmful")]["extra_peak_mib"]["mean"] == pytest.approx(30)
    assert row[("safelora", "faas")]["extra_seconds"]["mean"] == pytest.approx(2)       # its own processing
    assert row[("lisa", "harmful")]["worst_case"]["harmful_mean"] == pytest.approx(0.3)
    assert row[("lisa", "harmful")]["worst_case"]["lr"] == 0.01
    assert row[("none", "harmful")]["harmful_mean"]["n"] == 2
    write_report(tmp_path, {**m, "recipe": "t"})
    text = (tmp_path / "report.md").read_text()
    assert "| lisa | fine-tuning | harmful | en |" in text and (tmp_path / "pareto.png").is_file()
    assert (tmp_path / "per_language.png").is_file()
