"""Correctness of lab.attribution: SNIP / Wanda against direct computations of the formulas, masks
against brute force, analyses against hand computations, interventions exactly on the mask."""
import json

import pytest
import torch

from lab.attribution import analysis, interventions, masks, scores
from attribution_toy import TOY_RECORDS, tiny_model, tiny_tokenizer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _examples(tok):
    return [scores.encode_chat(tok, r["prompt"], r["response"]) for r in TOY_RECORDS]


def _linear_names(model):
    return [n + ".weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n]


# ----------------------------------------------------------------------------------- calibration


def test_response_span_is_assistant_text(tok):
    ids, labels = scores.encode_chat(tok, "hi there", "no way")
    resp = tok.decode([i for i, l in zip(ids, labels) if l != -100]).replace(" ", "")
    assert resp.startswith("noway") and "assistant" not in resp and "hi" not in resp
    assert labels[: len(ids) - 9] == [-100] * (len(ids) - 9)  # 'no way' (6) + <|im_end|> + '\n' ... tail only


def test_batches_right_padded(tok):
    b = scores.build_calibration(tok, TOY_RECORDS, batch_size=2)
    assert [x["input_ids"].shape[0] for x in b] == [2, 2, 1]
    for x in b:
        assert ((x["attention_mask"] == 0) <= (x["labels"] == -100)).all()


# ----------------------------------------------------------------------------------- scores


def test_random_scores_reproducible_and_optional_heads(tok):
    model = tiny_model("qwen2", tie=False)
    a = scores.random_scores(model, seed=3)
    b = scores.random_scores(model, seed=3)
    c = scores.random_scores(model, seed=4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.layers.0.mlp.up_proj.weight"], c["model.layers.0.mlp.up_proj.weight"])
    p = scores.scored_parameters(model, include_embeddings=True, include_lm_head=True)
    assert "lm_head.weight" in p and "model.embed_tokens.weight" in p
    assert "lm_head.weight" not in scores.scored_parameters(model)
    # Wanda for embeddings: sqrt(token count at response positions)
    batches = scores.build_calibration(tok, TOY_RECORDS[:2], batch_size=2)
    w = scores.wanda_scores(model, batches, include_embeddings=True)
    cnt = torch.zeros(100)
    for bt in batches:
        ids = bt["input_ids"][bt["labels"] != -100]
        cnt += torch.bincount(ids, minlength=100).float()
    want = model.model.embed_tokens.weight.detach().abs() * cnt.sqrt()[:, None]
    torch.testing.assert_close(w["model.embed_tokens.weight"], want)


# ----------------------------------------------------------------------------------- masks


def _brute_topk(named, k):
    flat = torch.cat([s.reshape(-1).float() for _, s in named])
    order = torch.sort(-flat, stable=True).indices[:k]
    sel = torch.zeros(flat.numel(), dtype=torch.bool)
    sel[order] = True
    out, i = {}, 0
    for n, s in named:
        out[n] = sel[i:i + s.numel()].reshape(s.shape)
        i += s.numel()
    return out


def _rand_scores(seed, ties=False):
    g = torch.Generator().manual_seed(seed)
    shapes = {"a.0.q.weight": (8, 6), "a.0.k.weight": (4, 6), "a.1.q.weight": (8, 6), "head.weight": (5, 3)}
    if ties:
        return {n: torch.randint(0, 5, s, generator=g).float() for n, s in shapes.items()}
    return {n: torch.rand(s, generator=g) for n, s in shapes.items()}


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("q", [0, 1, 10, 37.5, 100])
def test_top_q_matches_brute_force(q, ties):
    s = _rand_scores(0, ties)
    n = sum(v.numel() for v in s.values())
    got = masks.top_q_mask(s, q, "global")
    want = _brute_topk(list(s.items()), round(q / 100 * n))
    assert all(torch.equal(got[k], want[k]) for k in s)
    got = masks.top_q_mask(s, q, "per-matrix")
    for k, v in s.items():
        assert torch.equal(got[k], _brute_topk([(k, v)], round(q / 100 * v.numel()))[k])


@pytest.mark.parametrize("scope", ["global", "per-matrix"])
def test_set_difference_matches_brute_force(scope):
    s, u = _rand_scores(1), _rand_scores(2)
    got = masks.set_difference_mask(s, u, 30, 20, scope)
    n = sum(v.numel() for v in s.values())
    if scope == "global":
        ms, mu = _brute_topk(list(s.items()), round(0.3 * n)), _brute_topk(list(u.items()), round(0.2 * n))
    else:
        ms = {k: _brute_topk([(k, v)], round(0.3 * v.numel()))[k] for k, v in s.items()}
        mu = {k: _brute_topk([(k, v)], round(0.2 * v.numel()))[k] for k, v in u.items()}
    for k in s:
        # element-wise brute force: in safety top set and not in utility top set
        want = torch.tensor([bool(a) and not bool(b) for a, b in zip(ms[k].flatten(), mu[k].flatten())]).reshape(ms[k].shape)
        assert torch.equal(got[k], want)
    assert torch.equal(masks.set_difference_mask(s, None, 30, None, scope)["head.weight"], ms["head.weight"])


def test_bf16_scores_and_bad_input():
    s = {k: v.bfloat16() for k, v in _rand_scores(3).items()}
    got = masks.top_q_mask(s, 25, "global")
    want = _brute_topk(list(s.items()), round(0.25 * sum(v.numel() for v in s.values())))
    assert all(torch.equal(got[k], want[k]) for k in s)
    from lab.errors import LabError
    with pytest.raises(LabError):
        masks.top_q_mask(s, 150)
    with pytest.raises(LabError):
        masks.top_q_mask({"x": torch.tensor([1.0, float("nan")])}, 10)


def test_mask_and_scores_roundtrip(tmp_path):
    s = _rand_scores(4)
    m = masks.top_q_mask(s, 20, "per-matrix")
    path = masks.save_mask(m, tmp_path / "safety", {"method": "snip", "q": 20, "p": None, "data": "safety"})
    assert path.suffix == ".safetensors" and (tmp_path / "safety.json").is_file()
    m2, meta = masks.load_mask(tmp_path / "safety.safetensors")
    assert set(m2) == set(m) and all(m2[k].dtype == torch.bool and torch.equal(m2[k], m[k]) for k in m)
    assert meta["method"] == "snip" and meta["counts"]["per_module"]["a.0.q.weight"]["selected"] == round(0.2 * 48)
    assert meta["counts"]["selected"] == sum(int(v.sum()) for v in m.values())
    json.loads((tmp_path / "safety.json").read_text())
    sb = {k: v.bfloat16() for k, v in s.items()}
    masks.save_scores(sb, tmp_path / "scores", {"method": "snip"})
    s2, meta = masks.load_scores(tmp_path / "scores")
    assert all(torch.equal(s2[k], sb[k]) for k in s) and meta["dtype"] == "bfloat16"


# ----------------------------------------------------------------------------------- analysis


def test_jaccard_by_hand():
    a = {"x": torch.tensor([1, 1, 0, 0, 1], dtype=torch.bool), "y": torch.tensor([[1, 0], [0, 0]], dtype=torch.bool)}
    b = {"x": torch.tensor([1, 0, 1, 0, 1], dtype=torch.bool), "y": torch.tensor([[1, 1], [0, 0]], dtype=torch.bool)}
    # intersection: x {0,4}, y {(0,0)} = 3; union: x {0,1,2,4}, y {(0,0),(0,1)} = 6
    assert analysis.jaccard(a, b) == pytest.approx(3 / 6)
    empty = {k: torch.zeros_like(v) for k, v in a.items()}
    assert analysis.jaccard(empty, empty) == 1.0


def test_random_baseline_sizes_and_table(tmp_path):
    s = _rand_scores(5)
    ms = {lang: masks.top_q_mask(_rand_scores(10 + i), 25, "per-matrix") for i, lang in enumerate(["en", "ja", "zh"])}
    r = analysis.random_mask_like(ms["en"], seed=1)
    assert all(int(r[k].sum()) == int(ms["en"][k].sum()) for k in s)
    rg = analysis.random_mask_like(ms["en"], seed=1, match="global")
    assert sum(int(v.sum()) for v in rg.values()) == sum(int(v.sum()) for v in ms["en"].values())
    same = {"en": ms["en"], "en2": ms["en"]}
    rows = analysis.overlap_table(same, n_random=4)
    assert rows[0]["jaccard"] == 1.0 and rows[0]["random_jaccard"] < 0.5
    rows = analysis.overlap_table(ms, n_random=2)
    assert [(x["a"], x["b"]) for x in rows] == [("en", "ja"), ("en", "zh"), ("ja", "zh")]
    md = analysis.overlap_matrix_markdown(ms, rows)
    assert "| en |" in md
    model = tiny_model("qwen2")
    m = masks.top_q_mask(scores.random_scores(model), 5, "global")
    png = analysis.heatmap(m, tmp_path / "h.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    layers, kinds, grid = analysis.layer_module_fractions(m)
    assert layers == [0, 1] and "self_attn.k_proj" in kinds and "mlp.down_proj" in kinds


# ----------------------------------------------------------------------------------- interventions


def test_prune_and_restore_exact():
    model, other = tiny_model("qwen2", seed=0), tiny_model("qwen2", seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    m = masks.top_q_mask(scores.random_scores(model, seed=2), 10, "per-matrix")
    n = interventions.prune(model, m)
    assert n == sum(int(v.sum()) for v in m.values())
    sd = model.state_dict()
    for k, v in sd.items():
        if k in m:
            assert (v[m[k]] == 0).all() and torch.equal(v[~m[k]], before[k][~m[k]])
        else:
            assert torch.equal(v, before[k])
    interventions.restore(model, other, m)
    osd = other.state_dict()
    for k, v in model.state_dict().items():
        if k in m:
            assert torch.equal(v[m[k]], osd[k][m[k]]) and torch.equal(v[~m[k]], before[k][~m[k]])


def _train(model, tok, opt, steps=3, handle=None):
    batches = scores.build_calibration(tok, TOY_RECORDS, batch_size=5)
    model.train()
    for _ in range(steps):
        loss = scores.response_loss_sum(model, batches[0])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if handle is not None:
            handle.enforce()


@pytest.mark.parametrize("mode", ["only", "freeze"])
@pytest.mark.parametrize("opt_name,wd,enforce", [("sgd", 0.0, False), ("adamw", 0.0, False), ("adamw", 0.1, True)])
def test_grad_mask_full_finetune(tok, mode, opt_name, wd, enforce):
    model = tiny_model("qwen2", seed=0)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    m = masks.top_q_mask(scores.random_scores(model, seed=1), 20, "per-matrix")
    h = interventions.attach_grad_mask(model, m, mode)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (torch.optim.SGD(params, lr=0.1, momentum=0.9) if opt_name == "sgd"
           else torch.optim.AdamW(params, lr=1e-2, weight_decay=wd))
    _train(model, tok, opt, handle=h if enforce else None)
    h.remove()
    assert all(p.requires_grad for p in model.parameters())
    for k, p in model.named_parameters():
        p = p.detach()
        if k in m:
            fixed = ~m[k] if mode == "only" else m[k]
            assert torch.equal(p[fixed], before[k][fixed]), k
            assert not torch.equal(p[~fixed], before[k][~fixed]), k
        elif mode == "only":
            assert torch.equal(p, before[k]), k


@pytest.mark.parametrize("api", ["handle", "train_hooks"])
@pytest.mark.parametrize("mode", ["only", "freeze"])
def test_grad_mask_lora_masked_forward(tok, mode, api):
    peft = pytest.importorskip("peft")
    model = tiny_model("qwen2", seed=0)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    m = masks.top_q_mask(scores.random_scores(model, seed=1), 30, "per-matrix")
    cfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])
    pm = peft.get_peft_model(model, cfg)
    if api == "train_hooks":  # the way lab.train uses it: attach (no snapshot), train, remove, plain peft merge
        del m["model.layers.1.mlp.down_proj.weight"]  # a LoRA layer the mask does not cover
    h = interventions.attach_grad_mask(pm, m, mode, exact=api == "handle")
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=5e-2, weight_decay=0.0)
    _train(pm, tok, opt, steps=3)
    pm.eval()
    x = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        trained_out = pm(input_ids=x).logits
    if api == "train_hooks":
        h.remove()
        merged = pm.merge_and_unload()
    else:
        merged = interventions.merge_masked_lora(pm, h)
    with torch.no_grad():
        merged_out = merged(input_ids=x).logits
    torch.testing.assert_close(merged_out, trained_out, rtol=1e-4, atol=1e-5)  # merged == trained function
    changed = 0
    for k, p in merged.named_parameters():
        p = p.detach()
        if k in m:
            fixed = ~m[k] if mode == "only" else m[k]
            assert torch.equal(p[fixed], before[k][fixed]), k
            changed += int((p != before[k]).sum())
        elif k == "model.layers.1.mlp.down_proj.weight" and mode == "freeze":
            assert not torch.equal(p, before[k])  # uncovered LoRA layer trains freely under "freeze"
        else:
            assert torch.equal(p, before[k]), k
    assert changed > 0


# ----------------------------------------------------------------------------------- per-row scope


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("rounding", ["round", "floor"])
def test_per_row_scope_matches_brute_force(ties, rounding):
    s = _rand_scores(7, ties)
    s["bias"] = torch.rand(7, generator=torch.Generator().manual_seed(1))  # 1-D: one row
    q = 30
    got = masks.top_q_mask(s, q, "per-row", rounding)
    for k, v in s.items():
        rows = v.reshape(1, -1) if v.dim() == 1 else v
        kk = round(q / 100 * rows.shape[1]) if rounding == "round" else int(q / 100 * rows.shape[1])
        for r in range(rows.shape[0]):  # each row: its own top kk, ties to the lowest column
            want = _brute_topk([("r", rows[r])], kk)["r"]
            assert torch.equal(got[k].reshape(rows.shape)[r], want), (k, r)
    assert int(got["a.0.q.weight"].sum()) == 8 * (2 if rounding == "round" else 1)  # 30 % of 6 cols
    d = masks.set_difference_mask(s, _rand_scores(8) | {"bias": torch.rand(7)}, q, 20, "per-row")
    u = masks.top_q_mask(_rand_scores(8), 20, "per-row")
    assert torch.equal(d["a.1.q.weight"], masks.top_q_mask(s, q, "per-row")["a.1.q.weight"] & ~u["a.1.q.weight"])
    with pytest.raises(Exception, match="rounding"):
        masks.top_q_mask(s, q, "per-row", "ceil")
