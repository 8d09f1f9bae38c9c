"""Bad input: one clear message naming the place, exit code 2, nothing written."""
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lab.cli import app

runner = CliRunner()


def _recipe(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(body, encoding="utf-8")
    return p


def _run(tmp_path, body):
    out = tmp_path / "out"
    res = runner.invoke(app, ["run", str(_recipe(tmp_path, body)), "--out", str(out), "--no-wandb"])
    return res, out


BASE = "kind: transfer\nname: t\nmodel: zoo:organism\neval: {limit: 2}\n"


def test_misspelled_key_names_key_and_valid_keys(tmp_path):
    res, out = _run(tmp_path, BASE + "finetunes:\n  - {data: harmful, lang: en, lrr: 0.1}\n")
    assert res.exit_code == 2
    assert "finetunes.0.lrr" in res.output and "valid keys" in res.output and "lr," in res.output
    assert not out.exists()


def test_misspelled_top_level_key(tmp_path):
    res, out = _run(tmp_path, BASE + "sead: 3\n")
    assert res.exit_code == 2 and "'sead'" in res.output and "seed" in res.output
    assert not out.exists()


def test_missing_dataset_file(tmp_path):
    res, out = _run(tmp_path, BASE + "finetunes:\n  - {data: harmful, lang: en, path: nowhere/attack.jsonl}\n")
    assert res.exit_code == 2 and "nowhere/attack.jsonl" in res.output and "not found" in res.output
    assert not out.exists()


def test_malformed_jsonl_line_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "lang": "en", "kind": "harmful", "prompt": "p", "response": "r"}\n{oops\n')
    res, out = _run(tmp_path, BASE + f"finetunes:\n  - {{data: harmful, lang: en, path: {bad}}}\n")
    assert res.exit_code == 2 and f"{bad}:2" in res.output and "invalid JSON" in res.output
    assert not out.exists()


def test_unknown_language_code(tmp_path):
    res, out = _run(tmp_path, BASE + "finetunes:\n  - {data: harmful, lang: fr}\n")
    assert res.exit_code == 2 and "finetunes.0.lang" in res.output and "'fr'" in res.output
    assert not out.exists()


def test_unknown_language_in_data_file(tmp_path):
    bad = tmp_path / "fr.jsonl"
    bad.write_text(json.dumps({"id": "a", "lang": "fr", "kind": "harmful", "prompt": "p", "response": "r"}) + "\n")
    res, out = _run(tmp_path, BASE + f"finetunes:\n  - {{path: {bad}}}\n")
    assert res.exit_code == 2 and f"{bad}:1" in res.output and "'fr'" in res.output
    assert not out.exists()


def test_nonexistent_model_path(tmp_path):
    res, out = _run(tmp_path, "kind: transfer\nname: t\nmodel: ./no/such/model\n")
    assert res.exit_code == 2 and "./no/such/model" in res.output and "does not exist" in res.output
    assert not out.exists()


def test_unknown_zoo_name(tmp_path):
    res, out = _run(tmp_path, "kind: transfer\nname: t\nmodel: zoo:nope\n")
    assert res.exit_code == 2 and "zoo:nope" in res.output and "organism" in res.output


def test_invalid_yaml_names_line(tmp_path):
    res, out = _run(tmp_path, "kind: transfer\nname: t\nmodel: [unclosed\n")
    assert res.exit_code == 2 and "invalid YAML" in res.output and "r.yaml:" in res.output
    assert not out.exists()


def test_set_override_validated(tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(app, ["run", "recipes/attack.yaml", "--out", str(out), "--set", "attack.lang=xx", "--no-wandb"])
    assert res.exit_code == 2 and "attack.lang" in res.output
    assert not out.exists()


@pytest.mark.parametrize("recipe", sorted(str(p) for p in Path("recipes").glob("*.yaml")))
def test_shipped_recipes_validate(recipe):
    from lab.experiments import experiment_for, load_recipe

    experiment_for(load_recipe(recipe)).validate()


@pytest.mark.parametrize("item,needle", [("hidden=3", "key one of"), ("hidden_size=abc", "hidden_size")])
def test_zoo_build_set_validated(tmp_path, item, needle):
    out = tmp_path / "zoo"
    res = runner.invoke(app, ["zoo", "build", "organism", "--out", str(out), "--set", item])
    assert res.exit_code == 2 and needle in res.output
    assert not out.exists()
