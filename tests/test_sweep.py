"""lab sweep: cells, resume after kill -9, workers, aggregation -- with a fake, fast cell command."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from lab.errors import LabError
from lab.sweep import default_out, enumerate_cells, load_sweep, mean_ci, sweep_main
from lab.tracking import read_sweep_params, sweep_overrides_from_env

REPO = Path(__file__).resolve().parents[1]

# A stand-in for `python -m lab run RECIPE --out DIR`: reads its parameters the way the real runner
# does (WANDB_SWEEP_PARAM_PATH via lab.tracking), logs start/end to $FAKE_LOG, can sleep or die, and
# writes a deterministic metrics.json in the runner's layout (models, finetunes, transfer, config_hash, timings;
# written last, atomically) plus config.yaml. A recipe with `seeds:` gives one state per seed, like the runner.
FAKE_CELL = textwrap.dedent('''
    import json, os, sys, time, zlib
    from pathlib import Path
    import yaml
    from lab.tracking import sweep_overrides_from_env
    recipe, out = Path(sys.argv[1]), Path(sys.argv[sys.argv.index("--out") + 1])
    cfg = yaml.safe_load(recipe.read_text())
    ov = sweep_overrides_from_env()
    for k, v in ov.items():
        cur = cfg
        *head, last = k.split(".")
        for h in head:
            cur = cur.setdefault(h, {})
        cur[last] = v
    key = json.dumps(ov, sort_keys=True)
    def log(msg):
        if os.environ.get("FAKE_LOG"):
            fd = os.open(os.environ["FAKE_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.write(fd, (msg + "\\t" + key + "\\n").encode())
            os.close(fd)
    log("start")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
    if os.environ.get("FAKE_FAIL") and os.environ["FAKE_FAIL"] in key:
        log("fail"); sys.exit(3)
    def rate(*xs):
        return (zlib.crc32(json.dumps(xs).encode()) % 1000) / 1000
    langs = ["zh", "ja", "en", "it", "hi"]
    aligned = {l: {"harmful_refusal": 0.9, "benign_refusal": 0.05, "n_harmful": 20, "n_benign": 20,
                   "harmful_refusal_ci": [0.8, 0.95]} for l in langs}
    models, finetunes = {"aligned": aligned}, {}
    seeds = cfg.get("seeds") or [cfg.get("seed", 0)]
    fts = ([cfg["attack"]] if cfg.get("attack") else []) + cfg.get("finetunes", [])
    for seed in seeds:
        for ft in fts:
            atk = {**cfg.get("defaults", {}), **ft}
            base = ("attack-" if atk.get("data", "harmful") == "harmful" else "control-") + str(atk.get("lang"))
            state = base if not cfg.get("seeds") else f"{base}@s{seed}"
            models[state] = {l: {"harmful_refusal": rate(atk, l, seed) * (0.3 if atk.get("data") == "benign" else 1.0),
                                 "benign_refusal": rate("b", atk, l, seed) / 10, "n_harmful": 20, "n_benign": 20}
                             for l in langs}
            finetunes[state] = {"data": atk.get("data", "harmful"), "lang": atk.get("lang"), "seed": seed,
                                "base_state": base}
    transfer = {"baseline": "aligned", "metric": "harmful_refusal", "langs": langs,
                "rows": {s: {l: aligned[l]["harmful_refusal"] - m[l]["harmful_refusal"] for l in langs}
                         for s, m in models.items() if s != "aligned"}}
    m = {"recipe": cfg.get("name"), "config_hash": "fake" + str(zlib.crc32(key.encode())), "models": models,
         "finetunes": finetunes, "transfer": transfer, "timings": {"wall_seconds": 1.5}}
    if cfg.get("tracking") not in (None, "none"):
        from lab.tracking import start_tracking
        tr = start_tracking(out, cfg, mode=cfg["tracking"], name=out.name)
        tr.log_metrics(m)
        tr.finish()
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(m))
    os.replace(tmp, out / "metrics.json")
    log("end")
''')

RECIPE = {
    "kind": "transfer",
    "name": "fake-attack",
    "seed": 0,
    "model": "zoo:organism",
    "tracking": "none",
    "eval": {"limit": 2},
    "attack": {"data": "harmful", "lang": "en", "lr": 0.001, "epochs": 1, "n_examples": 10},
}


@pytest.fixture
def env(tmp_path, monkeypatch):
    fake = tmp_path / "fake_cell.py"
    fake.write_text(FAKE_CELL)
    recipe = tmp_path / "attack.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    log = tmp_path / "exec.log"
    monkeypatch.setenv("LAB_SWEEP_CELL_CMD", f"{{python}} {fake} {{recipe}} --out {{out}}")
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("FAKE_SLEEP", raising=False)
    monkeypatch.delenv("FAKE_FAIL", raising=False)
    return {"tmp": tmp_path, "recipe": recipe, "log": log, "fake": fake}


def write_sweep(tmp: Path, name: str, params: dict, method: str = "grid", **extra) -> Path:
    doc = {"name": name, "program": str(tmp / "attack.yaml"), "method": method, "parameters": params,
           "command": ["${env}", "${interpreter}", "-m", "lab", "run", "${program}"], **extra}
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


TRANSFER_PARAMS = {
    "attack": {"values": [{"data": "harmful", "lang": "zh"}, {"data": "harmful", "lang": "ja"},
                          {"data": "benign", "lang": "en"}]},
    "seed": {"values": [0, 1]},
}


def events(log: Path) -> list[tuple[str, str]]:
    if not log.exists():
        return []
    return [tuple(line.split("\t", 1)) for line in log.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- sweep files


def test_shipped_sweep_files_are_valid_wandb_sweeps():
    for name, n in (("transfer-seeds", 18), ("attack-strength", 12)):
        path = REPO / "recipes" / "sweeps" / f"{name}.yaml"
        raw = yaml.safe_load(path.read_text())
        assert raw["method"] == "grid" and raw["program"] == "recipes/attack.yaml"
        assert "${program}" in raw["command"] and "lab" in raw["command"]
        if not (REPO / "recipes" / "attack.yaml").exists():
            continue  # the recipe lands with the runner
        spec = load_sweep(path)
        cells = enumerate_cells(spec)
        assert len(cells) == n and len({c.id for c in cells}) == n
    spec = load_sweep(REPO / "recipes" / "sweeps" / "attack-strength.yaml") if (REPO / "recipes" / "attack.yaml").exists() else None
    if spec:
        assert sorted({c.flat["attack.n_examples"] for c in enumerate_cells(spec)}) == [10, 50, 100]


def test_grid_cells_names_and_ids(env):
    sw = write_sweep(env["tmp"], "t", TRANSFER_PARAMS)
    cells = enumerate_cells(load_sweep(sw))
    assert len(cells) == 6
    assert cells[0].flat == {"attack.data": "harmful", "attack.lang": "zh", "seed": 0}
    assert cells[0].dirname.startswith("data-harmful_lang-zh_seed-0--")
    assert len({c.id for c in cells}) == 6
    # same resolved config from another sweep file (dotted names, a default spelled out) -> same id
    sw2 = write_sweep(env["tmp"], "t2", {"attack.lang": {"value": "zh"}, "attack.lr": {"value": 0.001},
                                         "seed": {"values": [0]}})
    (c2,) = enumerate_cells(load_sweep(sw2))
    assert c2.id == cells[0].id


def test_random_is_seeded_and_deduplicated(env):
    params = {"attack.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
              "attack.lang": {"values": ["zh", "ja", "en"]}, "seed": {"values": [0, 1]}}
    sw = write_sweep(env["tmp"], "r", params, method="random", run_cap=5)
    a = [c.id for c in enumerate_cells(load_sweep(sw))]
    b = [c.id for c in enumerate_cells(load_sweep(sw))]
    assert a == b and len(set(a)) == 5
    c = [c.id for c in enumerate_cells(load_sweep(sw, seed=123))]
    assert c != a
    small = write_sweep(env["tmp"], "r2", {"seed": {"values": [0, 1]}}, method="random", run_cap=5)
    assert len(enumerate_cells(load_sweep(small))) == 2  # only two distinct cells exist


def test_bad_sweep_files_fail_clearly(env):
    tmp = env["tmp"]
    with pytest.raises(LabError, match="run_cap"):
        load_sweep(write_sweep(tmp, "a", {"seed": {"values": [0]}}, method="random"))
    with pytest.raises(LabError, match="--wandb"):
        load_sweep(write_sweep(tmp, "b", {"seed": {"values": [0]}}, method="bayes"))
    with pytest.raises(LabError, match="unknown top-level"):
        load_sweep(write_sweep(tmp, "c", {"seed": {"values": [0]}}, recipe="x.yaml"))
    with pytest.raises(LabError, match="attack.langg"):
        enumerate_cells(load_sweep(write_sweep(tmp, "d", {"attack.langg": {"values": ["zh"]}})))


def test_param_file_roundtrip(tmp_path, monkeypatch):
    p = tmp_path / "config-abc.yaml"
    # the W&B agent's format, nested values flatten to dotted recipe paths
    p.write_text("attack:\n  value:\n    data: harmful\n    lang: ja\nseed:\n  value: 2\n_wandb:\n  value: {}\n")
    monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", str(p))
    assert sweep_overrides_from_env() == {"attack.data": "harmful", "attack.lang": "ja", "seed": 2}
    j = tmp_path / "p.json"
    j.write_text(json.dumps({"attack.lr": {"value": 0.003}}))
    assert read_sweep_params(j) == {"attack.lr": 0.003}
    monkeypatch.delenv("WANDB_SWEEP_PARAM_PATH")
    assert sweep_overrides_from_env() == {}


def test_t_interval():
    s = mean_ci([0.1, 0.2, 0.3])  # scipy's t(0.975, df=2) = 4.302653
    assert s["mean"] == pytest.approx(0.2)
    assert s["half_width"] == pytest.approx(4.302653 * 0.1 / 3 ** 0.5, rel=1e-6)
    assert mean_ci([0.5])["ci95"] is None


# ----------------------------------------------------------------------------- executor


def test_sweep_runs_aggregates_and_skips_done_cells(env):
    sw = write_sweep(env["tmp"], "transfer", TRANSFER_PARAMS)
    out = env["tmp"] / "out"
    assert sweep_main(sw, out, workers=2, use_wandb=False, quiet=True) == 0
    ev = events(env["log"])
    assert Counter(e for e, _ in ev) == {"start": 6, "end": 6}
    summ = json.loads((out / "summary.json").read_text())  # --out DIR: the summary is DIR/summary.json
    assert summ["n_done"] == 6 and not summ["missing"]
    assert len(summ["groups"]) == 3 and all(g["n"] == 2 for g in summ["groups"])
    g = summ["groups"][0]
    hr = g["metrics"]["attack-zh"]["en"]["harmful_refusal"]
    assert hr["n"] == 2 and hr["ci95"][0] <= hr["mean"] <= hr["ci95"][1]
    t = summ["transfer"]  # read from the cells' metrics.json (transfer + finetunes), not from the recipe
    assert t["rows"] == ["zh", "ja", "en (benign)"] and t["cols"] == ["zh", "ja", "en", "it", "hi"]
    assert t["n"] == [[2] * 5] * 3 and all(ci[0] <= v <= ci[1] for r, cr in zip(t["drop"], t["ci95"])
                                            for v, ci in zip(r, cr))
    assert (out / "transfer_heatmap.png").stat().st_size > 1000
    md = (out / "summary.md").read_text()
    assert "![transfer heatmap](transfer_heatmap.png)" in md
    assert "± 0" not in md and "| 20 | 20 |" in md  # counts as counts, not "20 ± 0"
    assert re.search(r"\| \d+\.\d % \[\d+\.\d, \d+\.\d\] \|", md)  # rates in % with their CI
    assert all(c["dir"].startswith("cells/") and c["config_hash"].startswith("fake") for c in summ["cells"])
    for c in summ["cells"]:
        d = (out / c["dir"]).resolve()
        assert (d / "metrics.json").is_file() and (d / "sweep_cell.json").is_file()
        assert yaml.safe_load((d / "sweep_params.yaml").read_text())  # the params the cell ran with
    assert not list((out / "cells" / ".tmp").iterdir())
    # second run: nothing executes; a sweep file sharing cells reuses them
    assert sweep_main(sw, out, workers=1, use_wandb=False, quiet=True) == 0
    sw2 = write_sweep(env["tmp"], "zh-only", {"attack.lang": {"value": "zh"}, "seed": {"values": [0, 1, 2]}})
    assert sweep_main(sw2, out, workers=1, use_wandb=False, quiet=True) == 0
    assert Counter(e for e, _ in events(env["log"])) == {"start": 7, "end": 7}  # only seed 2 was new


def _run_executor(sw: Path, out: Path, workers: int, extra_env: dict | None = None) -> subprocess.Popen:
    code = ("import sys; from pathlib import Path; from lab.sweep import sweep_main; "
            f"sys.exit(sweep_main(Path({str(sw)!r}), Path({str(out)!r}), {workers}, False, True))")
    return subprocess.Popen([sys.executable, "-c", code], env={**os.environ, **(extra_env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_kill9_and_resume_matches_uninterrupted_run(env):
    sw = write_sweep(env["tmp"], "transfer", TRANSFER_PARAMS)
    # reference: uninterrupted
    ref_out = env["tmp"] / "ref"
    assert sweep_main(sw, ref_out, workers=2, use_wandb=False, quiet=True) == 0
    reference = json.loads((ref_out / "summary.json").read_text())
    env["log"].unlink()

    out = env["tmp"] / "out"
    p = _run_executor(sw, out, 2, {"FAKE_SLEEP": "0.6"})
    deadline = time.time() + 30
    while time.time() < deadline:  # kill -9 while cells are running, some already finished
        ev = events(env["log"])
        if sum(e == "end" for e, _ in ev) >= 2 and sum(e == "start" for e, _ in ev) > sum(e == "end" for e, _ in ev):
            break
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    time.sleep(0.3)
    before = events(env["log"])
    running_at_kill = {k for e, k in before if e == "start"} - {k for e, k in before if e == "end"}
    assert running_at_kill, "the kill should hit running cells"
    time.sleep(1.0)  # the killed cells must not finish on their own (they die with the executor)
    assert events(env["log"]) == before
    assert not (out / "summary.json").exists()

    assert sweep_main(sw, out, workers=2, use_wandb=False, quiet=True) == 0
    ev = events(env["log"])
    ends = Counter(k for e, k in ev if e == "end")
    assert len(ends) == 6 and set(ends.values()) == {1}, "every cell finished exactly once"
    starts = Counter(k for e, k in ev if e == "start")
    assert {k for k, n in starts.items() if n > 1} <= running_at_kill  # only interrupted cells re-ran
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed == reference


def test_two_executors_never_duplicate_a_cell(env):
    sw = write_sweep(env["tmp"], "transfer", TRANSFER_PARAMS)
    out = env["tmp"] / "out"
    procs = [_run_executor(sw, out, 2, {"FAKE_SLEEP": "0.3"}) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=60) == 0, p.stderr.read().decode()[-2000:]
    ev = events(env["log"])
    assert Counter(k for e, k in ev if e == "start") == Counter(k for e, k in ev if e == "end")
    assert sorted(Counter(k for e, k in ev if e == "start").values()) == [1] * 6
    assert json.loads((out / "summary.json").read_text())["n_done"] == 6


def test_failed_cell_is_reported_and_retried(env, monkeypatch):
    sw = write_sweep(env["tmp"], "transfer", TRANSFER_PARAMS)
    out = env["tmp"] / "out"
    monkeypatch.setenv("FAKE_FAIL", '"attack.lang": "ja", "seed": 1')
    assert sweep_main(sw, out, workers=2, use_wandb=False, quiet=True) == 1
    summ = json.loads((out / "summary.json").read_text())
    assert summ["n_done"] == 5 and len(summ["missing"]) == 1
    assert list((out / "cells" / ".failed").glob("*lang-ja_seed-1*.log"))
    monkeypatch.delenv("FAKE_FAIL")
    assert sweep_main(sw, out, workers=2, use_wandb=False, quiet=True) == 0
    assert Counter(e for e, _ in events(env["log"]))["end"] == 6


def test_wandb_flag_fails_clearly_without_server(env, monkeypatch, capsys):
    sw = write_sweep(env["tmp"], "transfer", TRANSFER_PARAMS)
    key = "k" * 40
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert sweep_main(sw, env["tmp"] / "out", workers=1, use_wandb=True, quiet=True) == 2
    err = capsys.readouterr().err
    assert "unreachable" in err and key not in err


def test_sweep_cells_track_offline(env, monkeypatch):
    """Cells whose recipe tracks offline leave a readable W&B run inside the cell dir."""
    from lab.tracking import read_offline_run

    rec = dict(RECIPE, tracking="offline")
    env["recipe"].write_text(yaml.safe_dump(rec))
    sw = write_sweep(env["tmp"], "tracked", {"attack.lang": {"value": "zh"}, "seed": {"values": [0]}})
    out = env["tmp"] / "out"
    assert sweep_main(sw, out, workers=1, use_wandb=False, quiet=True) == 0
    (cell,) = [d for d in (out / "cells").iterdir() if not d.name.startswith(".")]
    run = read_offline_run(cell)
    metrics = json.loads((cell / "metrics.json").read_text())
    assert run["summary"]["attack-zh/en/harmful_refusal"] == metrics["models"]["attack-zh"]["en"]["harmful_refusal"]
    assert run["name"] == cell.name and run["group"] == "tracked" and run["job_type"] == "sweep-cell"
    assert run["config"]["attack"]["lang"] == "zh"


def test_progress_quiet_lines_and_eta(capsys):
    from lab.progress import SweepProgress

    with SweepProgress(total=4, done=1, workers=2, quiet=True, title="demo") as sp:
        sp.started("a")
        sp.started("b")
        sp.finished("a", ok=True, seconds=10.0)
        assert sp.left == 1 and len(sp.running) == 1
        assert sp.eta() is not None and 0 < sp.eta() <= 10.0  # 1 queued + 1 running, 2 workers
        sp.finished("b", ok=False, seconds=3.0, note="exit code 3")
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "[sweep demo] 4 cells, 1 already done, 2 worker(s)"
    assert any(l.startswith("[sweep demo] done a in 10s -- 2/4 done, 1 running, 1 left") for l in err)
    assert any("FAILED b" in l and "exit code 3" in l for l in err)
    assert "finished: 2/4 done" in err[-1]


# ----------------------------------------------------------------------------- layout, recipes with finetunes


def test_sweep_over_a_finetunes_recipe_gets_its_transfer_table(env):
    """A recipe with `finetunes:` and `seeds:` (several states per cell): rows per fine-tune, seeds pooled."""
    env["recipe"].write_text(yaml.safe_dump({
        "kind": "transfer", "name": "fake-matrix", "model": "zoo:organism", "tracking": "none", "seeds": [0, 1],
        "eval": {"limit": 2}, "defaults": {"lr": 0.001, "epochs": 1, "n_examples": 10},
        "finetunes": [{"data": "harmful", "lang": "zh"}, {"data": "harmful", "lang": "ja"},
                      {"data": "benign", "lang": "en"}]}))
    sw = write_sweep(env["tmp"], "matrix", {"defaults.lr": {"values": [0.001, 0.003]}})
    out = env["tmp"] / "out"
    assert sweep_main(sw, out, workers=1, use_wandb=False, quiet=True) == 0
    summ = json.loads((out / "summary.json").read_text())
    t = summ["transfer"]
    assert t["rows"] == ["zh · lr-0.001", "ja · lr-0.001", "en (benign) · lr-0.001",
                         "zh · lr-0.003", "ja · lr-0.003", "en (benign) · lr-0.003"]
    assert t["n"][0] == [2] * 5  # the two seeds' states of one cell are the replicates
    cell = next(d for d in (out / "cells").iterdir() if "lr-0.001" in d.name)
    m = json.loads((cell / "metrics.json").read_text())
    zh_en = [m["transfer"]["rows"][f"attack-zh@s{s}"]["en"] for s in (0, 1)]
    assert t["drop"][0][2] == pytest.approx(sum(zh_en) / 2)
    # groups pool the seed states under the runner's base_state; a single replicate shows its Wilson CI
    g = summ["groups"][0]
    assert set(g["metrics"]) == {"aligned", "attack-zh", "attack-ja", "control-en"}
    assert g["metrics"]["attack-zh"]["en"]["harmful_refusal"]["n"] == 2
    hr = g["metrics"]["aligned"]["en"]["harmful_refusal"]
    assert hr["n"] == 1 and hr["ci_method"] == "wilson" and hr["ci95"] == [0.8, 0.95]  # aligned: once per cell
    md = (out / "summary.md").read_text()
    assert "| zh · lr-0.001 |" in md and "(n=2)" in md


def test_single_replicate_rates_carry_their_wilson_interval(env):
    sw = write_sweep(env["tmp"], "one", {"attack.lang": {"value": "zh"}, "seed": {"values": [0]}})
    out = env["tmp"] / "out"
    assert sweep_main(sw, out, workers=1, use_wandb=False, quiet=True) == 0
    hr = json.loads((out / "summary.json").read_text())["groups"][0]["metrics"]["aligned"]["en"]["harmful_refusal"]
    assert hr["n"] == 1 and hr["ci95"] == [0.8, 0.95] and hr["ci_method"] == "wilson"
    assert "| 90.0 % [80.0, 95.0] |" in (out / "summary.md").read_text()


def test_default_out_is_keyed_by_the_sweep(env, monkeypatch):
    monkeypatch.chdir(env["tmp"])
    sw = write_sweep(env["tmp"], "keyed", {"attack.lang": {"value": "zh"}, "seed": {"values": [0]}})
    first = default_out(load_sweep(sw))
    assert first.parent == Path("runs") and re.fullmatch(r"sweep-keyed-[0-9a-f]{10}", first.name)
    assert default_out(load_sweep(sw)) == first
    assert sweep_main(sw, None, workers=1, use_wandb=False, quiet=True) == 0
    assert (env["tmp"] / first / "summary.json").is_file() and len(list((env["tmp"] / first / "cells").glob("*--*"))) == 1
    sw2 = write_sweep(env["tmp"], "keyed", {"attack.lang": {"value": "ja"}, "seed": {"values": [0]}})
    assert default_out(load_sweep(sw2)) != first  # another sweep under the same name: another dir


def test_out_pointing_at_a_file_is_an_error(env):
    sw = write_sweep(env["tmp"], "t", {"seed": {"values": [0]}})
    f = env["tmp"] / "afile"
    f.write_text("x")
    with pytest.raises(LabError, match="afile.*is a file"):
        sweep_main(sw, f, workers=1, use_wandb=False, quiet=True)


def _lab(*args: str, **kw) -> subprocess.Popen:
    # SIGINT at its default disposition in the child: a shell's background job ("cmd &") inherits SIGINT
    # ignored, and Python then never raises KeyboardInterrupt (the Ctrl-C tests would test nothing)
    return subprocess.Popen([sys.executable, "-m", "lab", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            text=True, **kw)


def test_ctrl_c_prints_one_resume_line_and_exits_130(env):
    sw = write_sweep(env["tmp"], "transfer", TRANSFER_PARAMS)
    out = env["tmp"] / "out"
    p = _lab("sweep", str(sw), "--out", str(out), "--quiet", "--workers", "2", env={**os.environ, "FAKE_SLEEP": "30"})
    deadline = time.time() + 60
    while time.time() < deadline and sum(e == "start" for e, _ in events(env["log"])) < 2:
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "Traceback" not in err
    hint = [l for l in err.splitlines() if "interrupted" in l]
    assert hint == [f"[sweep transfer] interrupted; finished cells are kept -- rerun "
                    f"`lab sweep {sw} --out {out}` to resume."]
    assert err.splitlines()[-1] == hint[0] and "FAILED" not in err
    time.sleep(0.5)
    assert not [k for e, k in events(env["log"]) if e == "end"]  # the running cells were stopped
    assert sweep_main(sw, out, workers=2, use_wandb=False, quiet=True) == 0  # and the rerun finishes them


def test_agent_is_a_lab_sweep_option(env, monkeypatch):
    sw = write_sweep(env["tmp"], "transfer", TRANSFER_PARAMS)
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    p = _lab("sweep", str(sw), "--out", str(env["tmp"] / "out"), "--agent", "abc123")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "--agent" in err and "unreachable" in err and "k" * 40 not in err
    p = _lab("sweep", str(sw), "--agent", "abc123", "--wandb")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "give one of them" in err
    old = subprocess.run([sys.executable, "-m", "lab.sweep", str(sw), "--agent", "x"], capture_output=True, text=True)
    assert old.returncode != 0 and "cannot be directly executed" in old.stderr  # the argparse entry point is gone
