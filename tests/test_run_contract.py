"""The run contract, for every recipe kind: bad input -> exit 2, one message, nothing written; a dir
holding another config is refused; kill -9 then rerun resumes; a diverging fine-tune is no result."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lab.cli import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]

# tiny but complete recipes of each kind (seconds on one CPU thread)
TRANSFER = """kind: transfer
name: t
eval: {limit: 2, langs: [en, zh], margin: false}
defaults: {n_examples: 8, epochs: 1, batch_size: 8}
finetunes:
  - {data: harmful, lang: en}
"""
LOCALIZATION = """kind: localization
name: loc
tracking: none
eval: {limit: 2, langs: [en, zh], margin: false}
attribution: {method: wanda, n_examples: 4, per_language: false}
attack: {n_examples: 8, epochs: 1, batch_size: 8}
interventions: [prune]
"""
CENSORSHIP = """kind: censorship
name: cens
tracking: none
probe: {mode: quick, langs: [zh], samples: 1, temperature: 0, max_new_tokens: 8, controls: false}
models:
  - {name: censored, model: zoo:organism}
"""
KINDS = {"transfer": TRANSFER, "localization": LOCALIZATION, "censorship": CENSORSHIP}


def _write(tmp_path: Path, body: str, name: str = "r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(body, encoding="utf-8")
    return p


def _run(tmp_path, body, *args):
    out = tmp_path / "out"
    res = runner.invoke(app, ["run", str(_write(tmp_path, body)), "--out", str(out), "--no-wandb", "-q", *args])
    return res, out


def _one_line_error(res):
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    return res.output


# ------------------------------------------------------------------------------ kinds
def test_missing_kind_lists_the_kinds(tmp_path):
    res, out = _run(tmp_path, "name: t\n")
    msg = _one_line_error(res)
    assert "missing key 'kind'" in msg and "transfer" in msg and "localization" in msg and "censorship" in msg
    assert not out.exists()


def test_unknown_kind(tmp_path):
    res, out = _run(tmp_path, "kind: spine\nname: t\n")
    assert "unknown kind 'spine'" in _one_line_error(res) and not out.exists()


def test_empty_recipe_is_an_error_not_a_default_run(tmp_path):
    res, out = _run(tmp_path, "")
    assert "empty" in _one_line_error(res) and not out.exists()


@pytest.mark.parametrize("kind", list(KINDS))
def test_typo_names_file_key_and_valid_keys(tmp_path, kind):
    res, out = _run(tmp_path, KINDS[kind] + "eavl: {}\n")
    msg = _one_line_error(res)
    assert "r.yaml" in msg and "'eavl'" in msg and "valid keys here" in msg and "eval" in msg
    assert not out.exists()


# ------------------------------------------------------------------------------ ranges
@pytest.mark.parametrize("override,key", [
    ("finetunes.0.batch_size=0", "finetunes.0.batch_size"), ("eval.batch_size=0", "eval.batch_size"),
    ("eval.max_new_tokens=-5", "eval.max_new_tokens"), ("finetunes.0.epochs=-1", "finetunes.0.epochs"),
    ("finetunes.0.n_examples=-1", "finetunes.0.n_examples"), ("finetunes.0.lr=0", "finetunes.0.lr"),
    ("eval.limit=0", "eval.limit"), ("eval.langs=[]", "eval.langs"),
])
def test_ranges_checked_before_anything_is_written(tmp_path, override, key):
    res, out = _run(tmp_path, TRANSFER, "--set", override)
    assert key in _one_line_error(res) and not out.exists()


@pytest.mark.parametrize("kind,override,key", [
    ("localization", "attribution.q=0", "attribution.q"), ("localization", "attack.batch_size=0", "attack.batch_size"),
    ("censorship", "probe.samples=0", "probe.samples"), ("censorship", "probe.max_new_tokens=0", "probe.max_new_tokens"),
])
def test_ranges_in_every_kind(tmp_path, kind, override, key):
    res, out = _run(tmp_path, KINDS[kind], "--set", override)
    assert key in _one_line_error(res) and not out.exists()


# ------------------------------------------------------------------------------ overrides
@pytest.mark.parametrize("override,needle", [
    ("finetunes.0.lr=[unclosed", "invalid YAML"), ("name.x=1", "not a mapping"),
    ("finetunes.5.lr=1", "out of range"), ("defaults=5", "defaults"), ("eval.langs.9=en", "out of range"),
    ("finetunes.x.lr=1", "expected an index"), ("noequals", "key=value"), ("a..b=1", "malformed"),
])
def test_override_errors_name_the_key(tmp_path, override, needle):
    res, out = _run(tmp_path, TRANSFER, "--set", override)
    assert needle in _one_line_error(res) and not out.exists()


def test_list_index_override_applies(tmp_path):
    from lab.experiments import load_recipe

    r = load_recipe(_write(tmp_path, TRANSFER), {"finetunes.0.lang": "ja", "eval.langs.1": "hi"})
    assert r.finetunes[0].lang == "ja" and r.eval.langs == ["en", "hi"]


def test_include_merges_a_base_recipe(tmp_path):
    from lab.experiments import load_recipe

    _write(tmp_path, TRANSFER, "base.yaml")
    r = load_recipe(_write(tmp_path, "include: base.yaml\nname: child\neval: {limit: 3}\n", "child.yaml"))
    assert r.name == "child" and r.eval.limit == 3 and r.eval.langs == ["en", "zh"] and r.finetunes[0].n_examples == 8


# ------------------------------------------------------------------------------ unbounded inputs
def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    bomb = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    t = time.time()
    res, out = _run(tmp_path, TRANSFER + "seed: *i\n" + bomb)
    msg = _one_line_error(res)
    assert time.time() - t < 10 and "alias" in msg and len(msg) < 1000 and not out.exists()


def test_long_bad_value_is_cut_in_the_message(tmp_path):
    res, out = _run(tmp_path, TRANSFER + "seed: " + "x" * 100_000 + "\n")
    msg = _one_line_error(res)
    assert "seed" in msg and len(msg) < 1000


def test_prompt_longer_than_the_context_fails_before_writing(tmp_path):
    evals = tmp_path / "eval.jsonl"
    evals.write_text(json.dumps({"id": "x-en", "pid": "x", "lang": "en", "kind": "harmful", "topic": "t",
                                 "prompt": "word " * 200_000}) + "\n")
    res, out = _run(tmp_path, TRANSFER.replace("eval: {", f"eval: {{data: {evals}, ").replace("[en, zh]", "[en]"))
    assert "context" in _one_line_error(res) and not out.exists()


def test_duplicate_eval_ids_are_an_error(tmp_path):
    evals = tmp_path / "eval.jsonl"
    row = {"id": "x-en", "pid": "x", "lang": "en", "kind": "harmful", "topic": "t", "prompt": "hi"}
    evals.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    res, out = _run(tmp_path, TRANSFER.replace("eval: {", f"eval: {{data: {evals}, ").replace("[en, zh]", "[en]"))
    msg = _one_line_error(res)
    assert f"{evals}:2" in msg and "x-en" in msg and not out.exists()


def test_name_cannot_escape_runs(tmp_path):
    res, out = _run(tmp_path, TRANSFER.replace("name: t", "name: ../x"))
    assert "name" in _one_line_error(res) and not out.exists()


def test_out_pointing_at_a_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    res = runner.invoke(app, ["run", str(_write(tmp_path, TRANSFER)), "--out", str(f), "--no-wandb"])
    assert "not a directory" in _one_line_error(res) and f.read_text() == "x"


def test_report_on_corrupt_metrics(tmp_path):
    (tmp_path / "metrics.json").write_text("{not json")
    res = runner.invoke(app, ["report", str(tmp_path)])
    assert "metrics.json" in _one_line_error(res)


# ------------------------------------------------------------------------------ the contract, per kind
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished tiny run of each kind."""
    from lab.experiments import load_recipe, run

    base = tmp_path_factory.mktemp("kinds")
    out = {}
    for kind, body in KINDS.items():
        r = load_recipe(_write(base, body, f"{kind}.yaml"))
        metrics = run(r, base / kind, tracking="none", log=lambda *a, **k: None)
        out[kind] = (base / f"{kind}.yaml", base / kind, metrics)
    return out


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_writes_the_same_layout(finished, kind):
    _, d, m = finished[kind]
    for f in ("config.yaml", "generations.jsonl", "metrics.json", "report.md", "states/config.json"):
        assert (d / f).is_file(), f
    assert m["kind"] == kind and m["diverged"] == {} and m["config_hash"]
    assert all(k.startswith(("state/", "eval/", "train/", "probe/", "shares/")) or k == "wall_seconds" for k in m["timings"])


@pytest.mark.parametrize("kind,override,key", [
    ("transfer", "finetunes.0.lr=0.01", "finetunes.0.lr"), ("localization", "attribution.q=2", "attribution.q"),
    ("censorship", "probe.max_new_tokens=9", "probe.max_new_tokens"),
])
def test_rerun_with_another_config_is_refused(finished, kind, override, key):
    path, d, _ = finished[kind]
    before = (d / "metrics.json").read_bytes()
    res = runner.invoke(app, ["run", str(path), "--out", str(d), "--no-wandb", "--set", override])
    msg = _one_line_error(res)
    assert "different config" in msg and key in msg
    assert (d / "metrics.json").read_bytes() == before


@pytest.mark.parametrize("kind", list(KINDS))
def test_rerun_of_a_finished_run_does_nothing(finished, kind):
    path, d, m = finished[kind]
    res = runner.invoke(app, ["run", str(path), "--out", str(d), "--no-wandb"])
    assert res.exit_code == 0 and "nothing to do" in res.output


def _kill_after_first_state(cmd, states_dir: Path, env, timeout=300):
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t = time.time()
    while time.time() - t < timeout:
        done = [f for f in states_dir.glob("*.json") if f.name != "config.json"] if states_dir.is_dir() else []
        if done:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            return {f.name: f.stat().st_mtime_ns for f in done}
        if p.poll() is not None:
            break
        time.sleep(0.05)
    p.kill()
    pytest.fail("the run finished or hung before its first state was written")


@pytest.mark.parametrize("kind", list(KINDS))
def test_kill_9_then_rerun_resumes(finished, tmp_path, kind):
    path, _, metrics = finished[kind]
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "lab", "run", str(path), "--out", str(out), "--no-wandb", "-q"]
    first = _kill_after_first_state(cmd, out / "states", env)
    assert not (out / "metrics.json").exists()
    res = subprocess.run(cmd[:-1], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert all(f"[{n[:-5]}] done earlier; skipped" in res.stdout for n in first)
    assert all((out / "states" / n).stat().st_mtime_ns == t for n, t in first.items())  # not recomputed
    again = json.loads((out / "metrics.json").read_text())
    assert again["models"] == metrics["models"]
    assert set(again["timings"]) == set(metrics["timings"]) - {"wall_seconds"} | {"wall_seconds"}


# ------------------------------------------------------------------------------ divergence
def test_diverging_finetune_is_no_result(tmp_path):
    from lab.experiments import load_recipe, run

    r = load_recipe(_write(tmp_path, TRANSFER), {"finetunes.0.lr": 1e12, "finetunes.0.n_examples": 16,
                                                 "finetunes.0.epochs": 2})
    m = run(r, tmp_path / "out", tracking="none", log=lambda *a, **k: None)
    assert "attack-en" not in m["models"] and "attack-en" in m["diverged"]
    assert "diverged" in m["diverged"]["attack-en"] and "lr" in m["diverged"]["attack-en"]
    assert m["transfer"] is None or "attack-en" not in m["transfer"]["rows"]
    assert "Diverged" in (tmp_path / "out" / "report.md").read_text()


def test_full_finetune_at_lr_10_is_diverged_not_an_attack(tmp_path):
    from lab.experiments import load_recipe, run

    r = load_recipe(_write(tmp_path, TRANSFER), {"finetunes.0.lr": 10, "finetunes.0.method": "full",
                                                 "finetunes.0.n_examples": 16, "finetunes.0.epochs": 2})
    m = run(r, tmp_path / "out", tracking="none", log=lambda *a, **k: None)
    assert list(m["diverged"]) == ["attack-en"] and "attack-en" not in m["models"]


def test_rising_loss_counts_as_diverged():
    import torch

    from lab.config import FineTuneConfig
    from lab.train import Diverged, check_diverged

    model = torch.nn.Linear(2, 2)
    check_diverged([3.0, 2.0, 1.0, 0.5], model, FineTuneConfig(), 3.0, 0.5)
    check_diverged([1.0, 2.0, 5.0, 9.0], model, FineTuneConfig(), 3.0, 3.1)  # alternating schedules may rise
    with pytest.raises(Diverged, match="own training examples"):
        check_diverged([1.0], model, FineTuneConfig(), 3.0, 5.0)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(Diverged, match="non-finite"):
        check_diverged([1.0], model, FineTuneConfig())


# ------------------------------------------------------------------------------ Ctrl-C
def test_ctrl_c_says_how_to_resume(tmp_path):
    # a fine-tune long enough (16 steps) that the signal lands inside the run, not after it (with the
    # aligned state served from the evaluation cache, the 1-step recipe could finish within the poll)
    path = _write(tmp_path, TRANSFER.replace("n_examples: 8, epochs: 1", "n_examples: 32, epochs: 4"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "lab", "run", str(path), "--out", str(tmp_path / "o"), "--no-wandb"],
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # see tests/test_sweep.py
                         cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t = time.time()
    while not (tmp_path / "o" / "states").is_dir() and time.time() - t < 120:
        time.sleep(0.05)
    assert p.poll() is None, "the run ended before it could be interrupted"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "rerun the same command to resume" in err and "Traceback" not in err


# ------------------------------------------------------------------------------ two workers
def test_two_workers_give_the_same_metrics_as_one(finished, tmp_path):
    from lab.experiments import load_recipe, run

    path, _, one = finished["transfer"]
    r = load_recipe(path, {"finetunes": [{"data": "harmful", "lang": "en", "n_examples": 8, "epochs": 1},
                                         {"data": "benign", "lang": "en", "n_examples": 8, "epochs": 1}]})
    serial = run(r, tmp_path / "w1", tracking="none", log=lambda *a, **k: None)
    two = run(r, tmp_path / "w2", tracking="none", workers=2, log=lambda *a, **k: None)
    assert two["models"] == serial["models"] and serial["models"]["attack-en"] == one["models"]["attack-en"]
    a = (tmp_path / "w1" / "generations.jsonl").read_text()
    assert a == (tmp_path / "w2" / "generations.jsonl").read_text()


def test_an_idle_worker_takes_a_share_of_a_states_evaluation(finished, tmp_path):
    """One fine-tune + the starting model on 2 workers: once attack-en is trained no task waits, so the other
    worker takes shares of its prompts (4 = 2 x workers) from the saved adapter; the joined state equals one
    process's."""
    from lab.experiments import load_recipe, run

    path, d, one = finished["transfer"]
    two = run(load_recipe(path), tmp_path / "w2", tracking="none", workers=2, log=lambda *a, **k: None)
    assert two["timings"]["shares/attack-en"] == 4
    assert two["models"] == one["models"]
    assert (d / "generations.jsonl").read_text() == (tmp_path / "w2" / "generations.jsonl").read_text()
    # with margins (floats of batched passes): one task per language, the same per-language call one process makes
    r = load_recipe(path, {"eval": {"limit": 2, "langs": ["en", "zh"], "margin": True}})
    serial = run(r, tmp_path / "m1", tracking="none", log=lambda *a, **k: None)
    split = run(r, tmp_path / "m2", tracking="none", workers=2, log=lambda *a, **k: None)
    assert split["timings"]["shares/attack-en"] == 4 and split["models"] == serial["models"]
    assert {"margins-en", "margins-zh"} <= set(split["timings"]["tasks/attack-en"])
    assert (tmp_path / "m1" / "generations.jsonl").read_text() == (tmp_path / "m2" / "generations.jsonl").read_text()
    assert '"margin": null' not in next(l for l in (tmp_path / "m2" / "generations.jsonl").read_text().splitlines()
                                        if '"kind": "harmful"' in l)
    for d2 in ("w2", "m2"):
        left = [p.name for p in (tmp_path / d2 / "states").iterdir() if any(x in p.name for x in (".shard-", ".split.", ".margins-"))]
        assert not left, left


def _preloaded() -> list[str]:
    import sys

    return [m for m in ("torch", "transformers", "peft", "trl", "lab.train", "lab.experiments.preload") if m in sys.modules]


def test_workers_are_forked_from_a_server_that_imported_the_libraries(monkeypatch):
    """The pool's workers start with torch, transformers, peft, TRL and the lab imported (the forkserver's
    preload); LAB_WORKER_START=spawn gives the previous start (the benchmark's comparison); a bad value is an error."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from lab.errors import LabError
    from lab.experiments import parallel

    if "forkserver" not in mp.get_all_start_methods():
        pytest.skip("no forkserver on this platform (workers are spawned)")
    monkeypatch.delenv("LAB_WORKER_START", raising=False)
    ctx = parallel._context()
    assert ctx.get_start_method() == "forkserver"
    parallel.start_server()
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        assert pool.submit(_preloaded).result() == ["torch", "transformers", "peft", "trl", "lab.train",
                                                    "lab.experiments.preload"]
    monkeypatch.setenv("LAB_WORKER_START", "spawn")
    assert parallel._context().get_start_method() == "spawn"
    monkeypatch.setenv("LAB_WORKER_START", "fork")
    with pytest.raises(LabError, match="LAB_WORKER_START='fork': expected 'forkserver' or 'spawn'"):
        parallel._context()


@pytest.mark.parametrize("kind", ["localization", "censorship"])
def test_kinds_without_shares_run_on_two_workers(finished, kind, tmp_path):
    """--workers 2 on kinds whose states do not split their evaluation: the answers of one process."""
    from lab.experiments import load_recipe, run

    path, d, _ = finished[kind]
    run(load_recipe(path), tmp_path / "w2", tracking="none", workers=2, log=lambda *a, **k: None)
    assert (d / "generations.jsonl").read_text() == (tmp_path / "w2" / "generations.jsonl").read_text()


def test_quantization_on_cpu_fails_before_writing(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    res, out = _run(tmp_path, TRANSFER + "quantization: {load_in_4bit: true}\n")
    msg = _one_line_error(res)
    assert "quantization" in msg and "GPU" in msg and not out.exists()


def test_several_detectors_side_by_side(tmp_path):
    from lab.experiments import load_recipe, run

    r = load_recipe(_write(tmp_path, TRANSFER), {"eval.detector": ["tiered", "substring"], "finetunes": []})
    m = run(r, tmp_path / "out", tracking="none", log=lambda *a, **k: None)
    j = m["judges"]["aligned"]["substring"]
    assert set(j["metrics"]) == {"en", "zh"} and "kappa_vs_tiered" in j
    assert sum(map(sum, j["confusion"]["matrix"])) == 8  # 2 langs x (2 harmful + 2 benign)
    lines = (tmp_path / "out" / "disagreements.jsonl").read_text().splitlines()
    assert len(lines) == j["disagreements"]
    assert "other detectors" in (tmp_path / "out" / "report.md").read_text()
