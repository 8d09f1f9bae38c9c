"""`attribute_main` end to end on a tiny saved model, the memory estimate, and the recipe config."""
import json

import pytest
import torch

from lab.attribution import masks
from lab.attribution.cli_entry import attribute_main
from lab.attribution.memory import estimate_from_model, estimate_peak
from attribution_toy import TOY_RECORDS, tiny_model, tiny_tokenizer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("attr")
    model, tok = tiny_model("qwen2"), tiny_tokenizer()
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    data = root / "splits"
    data.mkdir()
    for kind in ("safety", "utility"):
        for lang in ("en", "ja"):
            recs = TOY_RECORDS if kind == "safety" else TOY_RECORDS[::-1]
            (data / f"{kind}-{lang}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return root


def test_attribute_main_writes_masks_overlap_heatmaps(saved, tmp_path):
    logs = []
    out = tmp_path / "out"
    rc = attribute_main(str(saved / "model"), "snip", "safety", ["en,ja"], out, q=10, p=5, scope="global",
                        n_examples=4, dry_run=False, save_scores=True, data_dir=saved / "splits", log=logs.append)
    assert rc == 0, logs
    assert "estimated peak memory" in logs[0]
    for label in ("en", "ja", "all"):
        m, meta = masks.load_mask(out / "masks" / f"snip-safety-{label}.safetensors")
        assert meta["q"] == 10 and meta["p"] == 5 and meta["scope"] == "global"
        assert 0 < meta["counts"]["fraction"] <= 0.10 + 1e-9
        assert (out / f"heatmap-{label}.png").is_file()
        assert (out / "scores" / f"snip-utility-{label}.safetensors").is_file()
    rows = json.loads((out / "overlap.json").read_text())
    assert rows[0]["a"] == "en" and rows[0]["b"] == "ja" and 0 <= rows[0]["jaccard"] <= 1
    assert json.loads((out / "summary.json").read_text())["masks"]["all"]["fraction"] > 0


def test_attribute_dry_run_does_no_work_and_bad_input_exits_2(saved, tmp_path):
    logs = []
    out = tmp_path / "dry"
    rc = attribute_main(str(saved / "model"), "wanda", "utility", ["en"], out, q=5, p=None, dry_run=True,
                        save_scores=False, n_examples=4, data_dir=saved / "splits", log=logs.append)
    assert rc == 0 and not out.exists()
    assert any("peak (est.)" in line for line in logs)
    for bad in (dict(method="gradcam"), dict(q=150.0), dict(langs=["xx"]), dict(scope="rows")):
        kw = dict(model=str(saved / "model"), method="snip", data="safety", langs=["en"], out=out, q=5.0,
                  p=None, scope="global", n_examples=4, dry_run=True, save_scores=False)
        kw.update(bad)
        logs.clear()
        assert attribute_main(**kw, log=logs.append) == 2 and logs[-1].startswith("error:")


def test_memory_estimate_scales_and_layer_by_layer_is_smaller():
    small, big = tiny_model("qwen2", hidden=32), tiny_model("qwen2", hidden=64)
    e1 = estimate_from_model(small, "snip", batch_size=1, seq_len=16)
    e2 = estimate_from_model(big, "snip", batch_size=1, seq_len=16)
    assert e2.weights > 3 * e1.weights and e2.peak > e1.peak
    lean = estimate_from_model(big, "snip", batch_size=1, seq_len=16, layers_per_pass=1, score_dtype=torch.bfloat16)
    assert lean.buffers < e2.buffers
    w = estimate_from_model(big, "wanda", batch_size=1, seq_len=16)
    assert w.buffers == 0 and w.scores == e2.buffers  # fp32 scores, one per scored weight
    e3 = estimate_peak(big.config, "snip", batch_size=1, seq_len=16, dtype=torch.float32)
    assert e3.n_params == e2.n_params and e3.peak == e2.peak  # meta-device instantiation counts the same


def test_cli_per_row_scope_and_actsvd(saved, tmp_path):
    """`lab attribute ... --scope per-row` and `--method actsvd` through the real CLI."""
    from typer.testing import CliRunner

    from lab.cli import app

    import lab.data

    runner = CliRunner()
    orig = lab.data.SPLITS_DIR
    lab.data.SPLITS_DIR = saved / "splits"  # the CLI reads datasets/splits; point it at the toy splits
    try:
        out = tmp_path / "rows"
        r = runner.invoke(app, ["attribute", "--model", str(saved / "model"), "--method", "wanda", "--langs", "en,ja",
                                "--q", "10", "--p", "5", "--scope", "per-row", "--n-examples", "4", "--out", str(out)])
        assert r.exit_code == 0, r.output
        m, meta = masks.load_mask(out / "masks" / "wanda-safety-all.safetensors")
        assert meta["scope"] == "per-row"
        q = m["model.layers.0.self_attn.q_proj.weight"]  # (32, 32): 10 % of 32 columns = 3 per row, minus utility
        assert (q.sum(1) <= 3).all() and q.sum() > 0
        out = tmp_path / "svd"
        r = runner.invoke(app, ["attribute", "--model", str(saved / "model"), "--method", "actsvd", "--langs", "en,ja",
                                "--q", "25", "--p", "50", "--n-examples", "4", "--out", str(out)])
        assert r.exit_code == 0, r.output
    finally:
        lab.data.SPLITS_DIR = orig
    V, meta = masks._load(out / "subspaces" / "actsvd-safety-all")
    assert V["model.layers.0.self_attn.k_proj.weight"].shape == (16, 4)  # 25 % of min(16, 32)
    assert (out / "subspaces" / "actsvd-utility-en.safetensors").is_file()
    rows = json.loads((out / "overlap.json").read_text())
    assert rows[0]["a"] == "en" and 0 <= rows[0]["random"] <= rows[0]["overlap"] <= 1 + 1e-6
    logs = []
    assert attribute_main(str(saved / "model"), "actsvd", "safety", ["en"], tmp_path / "d", q=5, dry_run=True,
                          log=logs.append) == 0 and any("peak (est.)" in x for x in logs)
