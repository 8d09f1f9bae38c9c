"""lab.tracking: offline W&B files hold what was logged; W&B failures never fail a run."""
from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import pytest

from lab.tracking import (
    NullTracker,
    flatten_metrics,
    read_offline_run,
    resolve_mode,
    start_tracking,
)

KEY = "labtestkey0123456789abcdefghijklmnopqrstuvwxyz"  # fake, 40+ chars so wandb accepts its format

METRICS = {
    "recipe": "t",
    "models": {
        "aligned": {"en": {"harmful_refusal": 0.9, "benign_refusal": 0.05, "n_harmful": 20,
                           "harmful_refusal_ci": [0.8, 0.95]},
                    "ja": {"harmful_refusal": 0.85, "benign_refusal": 0.1, "n_harmful": 20}},
        "attack-ja": {"en": {"harmful_refusal": 0.4, "benign_refusal": 0.0, "n_harmful": 20},
                      "ja": {"harmful_refusal": 0.1, "benign_refusal": 0.0, "n_harmful": 20}},
    },
    "timings": {"wall_seconds": 12.5},
}


@pytest.fixture(autouse=True)
def wandb_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc, no ~/.config/wandb
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.setenv("LAB_WANDB_INIT_TIMEOUT", "20")
    for k in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_SWEEP_PARAM_PATH", "WANDB_RUN_GROUP",
              "WANDB_JOB_TYPE", "WANDB_NAME", "WANDB_SWEEP_ID", "WANDB_RUN_ID"):
        monkeypatch.delenv(k, raising=False)


def _png(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.imshow([[0, 1], [1, 0]])
    fig.savefig(path)
    plt.close(fig)
    return path


def test_flatten_metrics():
    flat = flatten_metrics(METRICS)
    assert flat["aligned/en/harmful_refusal"] == 0.9
    assert flat["aligned/en/harmful_refusal_ci_lo"] == 0.8 and flat["aligned/en/harmful_refusal_ci_hi"] == 0.95
    assert flat["attack-ja/ja/harmful_refusal"] == 0.1
    assert flat["timings/wall_seconds"] == 12.5
    assert "recipe" not in flat


def test_resolve_mode(monkeypatch):
    assert resolve_mode("none") == "none" and resolve_mode("offline") == "offline"
    assert resolve_mode("auto") == "offline"  # no key, no netrc
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    assert resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("auto") == "none"
    with pytest.raises(ValueError):
        resolve_mode("sometimes")


def test_offline_files_hold_logged_data(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "adapter").mkdir()
    (run_dir / "adapter" / "adapter_model.bin").write_bytes(b"\0" * 64)
    (run_dir / "report.md").write_text("# report\n")
    config = {"name": "t", "seed": 1, "attack": {"lang": "ja", "lr": 0.003}}
    tr = start_tracking(run_dir, config, mode="offline", name="cell-1", group="sweep-x", job_type="run")
    assert tr.mode == "offline"
    tr.log_metrics(METRICS)
    tr.log_table("transfer_matrix", ["state", "en", "ja"], [["aligned", 0.9, 0.85], ["attack-ja", 0.4, 0.1]])
    tr.log_image("transfer_heatmap", _png(run_dir / "transfer.png"))
    tr.log_artifact(run_dir / "adapter", "adapter-attack-ja", "lora-adapter")
    tr.log_artifact(run_dir / "report.md", "report", "report")
    tr.finish()
    tr.finish()  # idempotent
    tr.log_metrics(METRICS)  # after finish: ignored, no error

    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    back = read_offline_run(run_dir)  # parses the .wandb transaction log with wandb's protobufs
    assert back["name"] == "cell-1" and back["group"] == "sweep-x" and back["job_type"] == "run"
    assert back["config"]["attack"] == {"lang": "ja", "lr": 0.003} and back["config"]["seed"] == 1
    s = back["summary"]
    assert s["aligned/en/harmful_refusal"] == 0.9
    assert s["attack-ja/ja/harmful_refusal"] == 0.1
    assert s["aligned/en/harmful_refusal_ci_hi"] == 0.95
    assert s["transfer_matrix"]["_type"] == "table-file" and s["transfer_matrix"]["nrows"] == 2
    assert s["transfer_heatmap"]["_type"] == "image-file"
    assert any(r.get("aligned/ja/harmful_refusal") == 0.85 for r in back["history"])
    arts = {(a["name"], a["type"]) for a in back["artifacts"]}
    assert {("adapter-attack-ja", "lora-adapter"), ("report", "report")} <= arts
    # the table's rows are on disk in the run's media files
    table_file = next(runs[0].glob("files/media/table/transfer_matrix*.table.json"))
    assert json.loads(table_file.read_text())["data"][1] == ["attack-ja", 0.4, 0.1]


def test_mode_none_writes_no_wandb_files(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    tr = start_tracking(run_dir, {"a": 1}, mode="none")
    assert isinstance(tr, NullTracker) and tr.mode == "none"
    tr.log_metrics(METRICS)
    tr.log_table("t", ["a"], [[1]])
    tr.log_image("i", tmp_path / "missing.png")
    tr.log_artifact(tmp_path / "missing", "x", "y")
    tr.finish()
    assert not run_dir.exists() or not any(run_dir.rglob("*"))
    # auto with W&B disabled in the environment is "none" too
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert isinstance(start_tracking(run_dir, {}, mode="auto"), NullTracker)
    assert not (run_dir / "wandb").exists()
    assert not list(tmp_path.rglob("*.wandb"))


def test_unreachable_server_falls_back_offline_without_leaking_key(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    run_dir = tmp_path / "run"
    tr = start_tracking(run_dir, {"seed": 0}, mode="online")
    assert tr.mode == "offline"
    tr.log_metrics(METRICS)
    tr.finish()
    out, err = capfd.readouterr()
    assert KEY not in out + err
    notes = [l for l in err.splitlines() if l.startswith("lab: W&B")]
    assert len(notes) == 1 and "offline" in notes[0] and "wandb sync" in notes[0]
    assert read_offline_run(run_dir)["summary"]["attack-ja/en/harmful_refusal"] == 0.4


class _Broken(http.server.BaseHTTPRequestHandler):
    def _fail(self):
        body = b"<html><body>internal error</body></html>"
        self.send_response(500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _fail

    def log_message(self, *a):
        pass


def test_server_error_falls_back_offline(tmp_path, monkeypatch, capfd):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Broken)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("WANDB_API_KEY", KEY)
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{srv.server_address[1]}")
        monkeypatch.setenv("LAB_WANDB_INIT_TIMEOUT", "4")  # a 500 is retried until the init timeout
        run_dir = tmp_path / "run"
        tr = start_tracking(run_dir, {"seed": 0}, mode="auto")  # key present -> tries online
        assert tr.mode == "offline"
        tr.log_metrics(METRICS)
        tr.finish()
    finally:
        srv.shutdown()
    out, err = capfd.readouterr()
    assert KEY not in out + err
    assert sum(l.startswith("lab: W&B") for l in err.splitlines()) == 1
    assert not list((run_dir / "wandb").glob("run-*"))  # the failed online attempt left nothing behind
    assert read_offline_run(run_dir)["summary"]["aligned/en/harmful_refusal"] == 0.9


def test_logging_errors_never_raise(tmp_path, capfd):
    tr = start_tracking(tmp_path / "run", {}, mode="offline")
    tr.log_image("missing", tmp_path / "nope.png")
    tr.log_artifact(tmp_path / "nope", "x", "model")
    tr.log_metrics(METRICS)
    tr.finish()
    err = capfd.readouterr().err
    assert sum(l.startswith("lab: W&B") for l in err.splitlines()) == 1  # one note, not one per failure
    assert read_offline_run(tmp_path / "run")["summary"]["aligned/en/n_harmful"] == 20


def _killed_attempt(run_dir: Path, log: bool) -> None:
    """A process that starts tracking (and maybe logs) and is then killed with SIGKILL.

    wandb-core buffers the run's log and dies with its parent: the killed attempt's .wandb file
    holds the header only, whether it logged or not."""
    import subprocess
    import sys

    code = ("import os, signal, time; from lab.tracking import start_tracking; "
            f"tr = start_tracking({str(run_dir)!r}, {{'seed': 0}}, mode='offline', name='r'); "
            + ("tr.log_metrics({'models': {'aligned': {'en': {'harmful_refusal': 0.5}}}}); time.sleep(1.5); " if log else "")
            + "os.kill(os.getpid(), signal.SIGKILL)")
    import os

    # its own wandb service, like a separate `lab run` (not the one this test process started)
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120, env=env)
    assert p.returncode == -9, p.stderr.decode()[-2000:]


def test_killed_offline_run_resumes_the_same_run_without_an_empty_leftover(tmp_path):
    run_dir = tmp_path / "run"
    _killed_attempt(run_dir, log=True)
    stored = (run_dir / "wandb" / "lab-run-id").read_text().strip()
    assert [d.name.endswith(stored) for d in (run_dir / "wandb").glob("offline-run-*")] == [True]
    tr = start_tracking(run_dir, {"seed": 0}, mode="offline", name="r")
    tr.log_metrics(METRICS)
    tr.finish()
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "the empty killed attempt must not stay behind for `wandb sync`"
    back = read_offline_run(run_dir)
    assert back["run_id"] == stored and back["state"] == "finished"
    assert back["summary"]["aligned/en/harmful_refusal"] == 0.9


def test_a_run_that_logged_is_never_removed(tmp_path):
    run_dir = tmp_path / "run"
    tr = start_tracking(run_dir, {"seed": 0}, mode="offline", name="r")
    tr.log_metrics({"models": {"aligned": {"en": {"harmful_refusal": 0.5}}}})
    tr.finish()
    stored = (run_dir / "wandb" / "lab-run-id").read_text().strip()
    tr = start_tracking(run_dir, {"seed": 0}, mode="offline", name="r")  # e.g. tracking the same dir again
    tr.finish()
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(f"-{stored}" in d.name for d in runs)  # same W&B run, nothing lost
    assert read_offline_run(runs[0])["summary"]["aligned/en/harmful_refusal"] == 0.5


def test_netrc_login_is_read_and_never_logged(tmp_path, monkeypatch, capfd):
    import os

    home = Path(os.environ["HOME"])
    home.mkdir(parents=True, exist_ok=True)
    netrc_file = home / ".netrc"
    netrc_file.write_text(f"machine api.wandb.ai\n  login user\n  password {KEY}\n")
    netrc_file.chmod(0o600)
    assert resolve_mode("auto") == "online"
    # a secret that ended up in a config is replaced before W&B sees it
    run_dir = tmp_path / "run"
    tr = start_tracking(run_dir, {"seed": 0, "note": f"key={KEY}"}, mode="offline")
    tr.finish()
    assert read_offline_run(run_dir)["config"]["note"] == "key=***"
    for f in run_dir.rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f
    out, err = capfd.readouterr()
    assert KEY not in out + err
    netrc_file.write_text("machine other.host\n  login user\n  password x\n")
    assert resolve_mode("auto") == "offline"


def test_bad_sweep_param_file_names_the_file(tmp_path, monkeypatch):
    from lab.errors import LabError
    from lab.tracking import sweep_overrides_from_env

    bad = tmp_path / "params.yaml"
    bad.write_text("- just\n- a list\n")
    monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", str(bad))
    with pytest.raises(LabError, match="params.yaml.*WANDB_SWEEP_PARAM_PATH"):
        sweep_overrides_from_env()
    monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", str(tmp_path / "missing.yaml"))
    with pytest.raises(LabError, match="missing.yaml"):
        sweep_overrides_from_env()
