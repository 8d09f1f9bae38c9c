"""SNIP (Wei et al.'s per-example estimator and the pooled one) and Wanda against direct autograd /
explicit input capture, one unpadded example at a time; language balancing for both."""
import pytest
import torch
import torch.nn.functional as F

from attribution_toy import TOY_RECORDS, tiny_model, tiny_tokenizer
from lab.attribution import scores

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _linear_names(model):
    return [n + ".weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n]


def _example_loss(model, ids, lab, reduction="mean"):
    logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
    tgt = torch.tensor(lab[1:])
    sel = tgt != -100
    return F.cross_entropy(logits[sel], tgt[sel], reduction=reduction)


def _direct_per_example(model, exs_by_group):
    """|W| ⊙ Σ_groups Σ_i |∇ℓᵢ| / (n_groups · n_group): one autograd call per unpadded example."""
    params = dict(model.named_parameters())
    names = _linear_names(model)
    acc = {k: torch.zeros_like(params[k]) for k in names}
    for exs in exs_by_group:
        for ids, lab in exs:
            grads = torch.autograd.grad(_example_loss(model, ids, lab), [params[k] for k in names])
            for k, g in zip(names, grads):
                acc[k] += g.abs() / (len(exs_by_group) * len(exs))
    return {k: params[k].detach().abs() * acc[k] for k in names}


def _encode(tok, recs):
    return [scores.encode_chat(tok, r["prompt"], r["response"]) for r in recs]


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_snip_is_per_example_abs_gradient_equal_to_batch_size_one(tok, family):
    model = tiny_model(family)
    want = _direct_per_example(model, [_encode(tok, TOY_RECORDS)])
    batches = scores.build_calibration(tok, TOY_RECORDS, batch_size=3)  # padded batches of 3 and 2
    for impl in ("outer", "microbatch"):
        got = scores.snip_scores(model, batches, impl=impl)
        assert list(got) == list(want)
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-8, msg=lambda m: f"{impl} {k}: {m}")
    # layer-by-layer passes and bf16 storage give the same scores
    lbl = scores.snip_scores(model, batches, layers_per_pass=1, score_dtype=torch.bfloat16)
    for k in want:
        assert lbl[k].dtype == torch.bfloat16
        torch.testing.assert_close(lbl[k].float(), want[k], rtol=1e-2, atol=1e-7)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    # the placement of the absolute value matters: the pooled estimator is a different ranking
    pooled = scores.snip_pooled_scores(model, batches)
    k = "model.layers.0.mlp.up_proj.weight"
    ratio = pooled[k] / want[k].clamp_min(1e-30)
    assert ratio.std() > 0.1 * ratio.mean()  # not a rescaling of the per-example scores


def test_snip_embeddings_fall_back_to_microbatches(tok):
    model = tiny_model("qwen2", tie=False)
    batches = scores.build_calibration(tok, TOY_RECORDS[:3], batch_size=3)
    got = scores.compute_scores(model, "snip", batches, include_embeddings=True)
    emb = model.model.embed_tokens.weight
    acc = torch.zeros_like(emb)
    exs = _encode(tok, TOY_RECORDS[:3])
    for ids, lab in exs:
        acc += torch.autograd.grad(_example_loss(model, ids, lab), [emb])[0].abs() / len(exs)
    torch.testing.assert_close(got["model.embed_tokens.weight"], emb.detach().abs() * acc, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_snip_pooled_matches_autograd_of_summed_loss(tok, family):
    model = tiny_model(family)
    batches = scores.build_calibration(tok, TOY_RECORDS, batch_size=2)
    got = scores.compute_scores(model, "snip-pooled", batches)
    exs = _encode(tok, TOY_RECORDS)
    n = sum(sum(1 for l in lab[1:] if l != -100) for _, lab in exs)
    total = sum(_example_loss(model, ids, lab, "sum") for ids, lab in exs)
    params = dict(model.named_parameters())
    names = _linear_names(model)
    grads = torch.autograd.grad(total / n, [params[k] for k in names])
    assert list(got) == names
    for k, g in zip(names, grads):
        torch.testing.assert_close(got[k], (params[k].detach() * g).abs(), rtol=1e-4, atol=1e-7)
    q = got["model.layers.0.self_attn.q_proj.weight"]
    kk = got["model.layers.0.self_attn.k_proj.weight"]
    assert kk.shape[0] == q.shape[0] // 2  # GQA: k/v narrower than q, handled by shape alone


BY_LANG = {"en": TOY_RECORDS[:2], "ja": TOY_RECORDS[2:]}


def test_balanced_snip_weights_languages_and_examples_equally(tok):
    model = tiny_model("qwen2", seed=2)
    got = scores.snip_scores(model, scores.build_balanced_calibration(tok, BY_LANG, batch_size=2))
    want = _direct_per_example(model, [_encode(tok, r) for r in BY_LANG.values()])
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-8)


def test_balanced_snip_pooled_weights_languages_equally(tok):
    model = tiny_model("qwen2", seed=2)
    got = scores.snip_pooled_scores(model, scores.build_balanced_calibration(tok, BY_LANG, batch_size=2))
    params = dict(model.named_parameters())
    names = _linear_names(model)
    total = 0.0
    for recs in BY_LANG.values():  # mean over languages of each language's token-mean loss
        exs = _encode(tok, recs)
        n = sum(sum(1 for l in lab[1:] if l != -100) for _, lab in exs)
        total = total + sum(_example_loss(model, ids, lab, "sum") for ids, lab in exs) / (2 * n)
    grads = torch.autograd.grad(total, [params[k] for k in names])
    for k, g in zip(names, grads):
        torch.testing.assert_close(got[k], (params[k].detach() * g).abs(), rtol=1e-4, atol=1e-7)


def _captured_inputs(model, names, exs):
    """Per layer: the inputs at response positions of every example, each run alone (unpadded)."""
    mods = {n + ".weight": m for n, m in model.named_modules() if n + ".weight" in names}
    cap = {}
    hooks = [m.register_forward_hook(lambda mod, a, o, k=k: cap.__setitem__(k, a[0].detach())) for k, m in mods.items()]
    rows = {k: [] for k in names}
    with torch.no_grad():
        for ids, lab in exs:
            model(input_ids=torch.tensor([ids]))
            sel = torch.tensor(lab) != -100
            for k in names:
                rows[k].append(cap[k][0][sel])  # (n_response_tokens, in)
    for h in hooks:
        h.remove()
    return mods, {k: torch.cat(v) for k, v in rows.items()}


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_wanda_matches_explicit_input_capture(tok, family):
    model = tiny_model(family, seed=1)
    got = scores.wanda_scores(model, scores.build_calibration(tok, TOY_RECORDS, batch_size=3))
    names = _linear_names(model)
    mods, x = _captured_inputs(model, names, _encode(tok, TOY_RECORDS))
    assert list(got) == names
    for k in names:
        torch.testing.assert_close(got[k], mods[k].weight.detach().abs() * x[k].norm(dim=0)[None, :],
                                   rtol=1e-4, atol=1e-6)


def test_balanced_wanda_weights_languages_equally(tok):
    """The "all" group: ‖X_j‖² = Σ_l (1 / (2 · tokens_l)) Σ_{t in l} x_tj² — the loss_weight reaches Wanda."""
    model = tiny_model("llama", seed=3)
    got = scores.wanda_scores(model, scores.build_balanced_calibration(tok, BY_LANG, batch_size=2))
    names = _linear_names(model)
    sq = {k: 0.0 for k in names}
    for recs in BY_LANG.values():
        exs = _encode(tok, recs)
        n = sum(sum(1 for l in lab[1:] if l != -100) for _, lab in exs)
        mods, x = _captured_inputs(model, names, exs)
        for k in names:
            sq[k] = sq[k] + x[k].pow(2).sum(0) / (2 * n)
    pooled = scores.wanda_scores(model, scores.build_calibration(tok, TOY_RECORDS, batch_size=2))
    differs = 0
    for k in names:
        want = mods[k].weight.detach().abs() * sq[k].sqrt()[None, :]
        torch.testing.assert_close(got[k], want, rtol=1e-4, atol=1e-7)
        ratio = got[k] / pooled[k].clamp_min(1e-30)
        differs += int(ratio.std() > 1e-3 * ratio.mean())  # not just a rescaled unweighted Wanda
    assert differs > 0
