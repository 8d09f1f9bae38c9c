"""ActSVD: subspaces against an explicit SVD of the stacked response-token activations, the
interventions against their formulas, Gram memory bounded by the weight, bad ranks."""
import pytest
import torch

from attribution_toy import TOY_RECORDS, tiny_model, tiny_tokenizer
from lab.attribution import actsvd, scores
from lab.errors import LabError

torch.set_num_threads(1)
NAMES = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
         "model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.down_proj.weight"]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def stacked_inputs(model, tok, recs):
    """name -> X (n_response_tokens x d_in), every example run alone (the reference's concatenation)."""
    mods = dict(model.named_modules())
    cap, rows = {}, {n: [] for n in NAMES}
    hooks = [mods[n[:-7]].register_forward_hook(lambda m, a, o, n=n: cap.__setitem__(n, a[0])) for n in NAMES]
    with torch.no_grad():
        for r in recs:
            ids, lab = scores.encode_chat(tok, r["prompt"], r["response"])
            model(input_ids=torch.tensor([ids]))
            for n in NAMES:
                rows[n].append(cap[n][0][torch.tensor(lab) != -100])
    for h in hooks:
        h.remove()
    return {n: torch.cat(v).double() for n, v in rows.items()}


def _proj_matrix(V):
    return V.double() @ V.double().T


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_subspaces_equal_svd_of_activations(tok, family):
    model = tiny_model(family, seed=4)
    batches = scores.build_calibration(tok, TOY_RECORDS, batch_size=2)
    grams = actsvd.activation_grams(model, batches)
    sides = {n: grams[n][0] for n in NAMES}
    assert sides == dict(zip(NAMES, ["in", "out", "in", "out"]))  # q (32x32), k (16x32), up (64x32), down (32x64)
    for n, (side, g) in grams.items():
        assert g.numel() <= dict(model.named_parameters())[n].numel()  # memory: no more than the weight
    X = stacked_inputs(model, tok, TOY_RECORDS)
    params = dict(model.named_parameters())
    for rank in (3, 0.25):
        V = actsvd.actsvd_subspaces(model, batches, rank)
        for n in NAMES:
            W = params[n].detach().double()
            A = X[n] @ W.T  # (n_tokens, d_out)
            r = actsvd.resolve_rank(rank, *W.shape)
            assert V[n].shape == (W.shape[0], r)
            _, S, Vh = torch.linalg.svd(A, full_matrices=False)
            assert S[r - 1] > 1.01 * S[r]  # a spectral gap, so the subspace is well defined
            torch.testing.assert_close(_proj_matrix(V[n]), Vh[:r].T @ Vh[:r], atol=2e-4, rtol=0)


def test_interventions_follow_their_formulas(tok):
    model = tiny_model("qwen2", seed=5)
    safety = actsvd.actsvd_subspaces(model, scores.build_calibration(tok, TOY_RECORDS[:3]), 4, names=NAMES)
    utility = actsvd.actsvd_subspaces(model, scores.build_calibration(tok, TOY_RECORDS[3:]), 6, names=NAMES)
    before = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    eye = {n: torch.eye(before[n].shape[0], dtype=torch.float64) for n in NAMES}

    m1 = tiny_model("qwen2", seed=5)
    assert actsvd.remove_subspace(m1, safety) == len(NAMES)
    m2 = tiny_model("qwen2", seed=5)
    actsvd.remove_subspace(m2, safety, utility)
    m3 = tiny_model("qwen2", seed=5)
    actsvd.keep_subspace(m3, safety)
    p1, p2, p3 = (dict(m.named_parameters()) for m in (m1, m2, m3))
    for n in NAMES:
        Ps, Pu, W = _proj_matrix(safety[n]), _proj_matrix(utility[n]), before[n]
        torch.testing.assert_close(p1[n].detach().double(), W - Ps @ W, atol=1e-5, rtol=0)
        torch.testing.assert_close(p2[n].detach().double(), W - (eye[n] - Pu) @ Ps @ W, atol=1e-5, rtol=0)
        torch.testing.assert_close(p3[n].detach().double(), Ps @ W, atol=1e-5, rtol=0)
        assert (Ps @ p1[n].detach().double()).abs().max() < 1e-5  # no output left in the safety subspace
    untouched = "model.layers.0.self_attn.v_proj.weight"
    assert torch.equal(p1[untouched].detach().double(), before[untouched])
    # restore: the source's component inside the subspace, the model's own outside it
    attacked = tiny_model("qwen2", seed=6)
    att = {n: p.detach().double().clone() for n, p in attacked.named_parameters()}
    actsvd.restore_subspace(attacked, model, safety)
    pr = dict(attacked.named_parameters())
    for n in NAMES:
        Ps = _proj_matrix(safety[n])
        got = pr[n].detach().double()
        torch.testing.assert_close(Ps @ got, Ps @ before[n], atol=1e-5, rtol=0)
        torch.testing.assert_close(got - Ps @ got, att[n] - Ps @ att[n], atol=1e-5, rtol=0)


def test_overlap_bad_rank_and_balancing(tok):
    model = tiny_model("llama", seed=7)
    a = actsvd.actsvd_subspaces(model, scores.build_calibration(tok, TOY_RECORDS[:2]), 4, names=NAMES)
    b = actsvd.actsvd_subspaces(model, scores.build_calibration(tok, TOY_RECORDS[2:]), 4, names=NAMES)
    same = actsvd.subspace_overlap(a, a)
    assert same["overlap"] == pytest.approx(1.0, abs=1e-5) and same["layers"] == len(NAMES)
    ab = actsvd.subspace_overlap(a, b)
    assert ab["random"] < ab["overlap"] < 1.0
    with pytest.raises(LabError, match="rank"):
        actsvd.resolve_rank(17, 16, 32)
    with pytest.raises(LabError, match="fraction"):
        actsvd.resolve_rank(1.5, 16, 32)
    # loss_weight reaches the Grams: balanced "all" = mean of the per-language Grams, each a token mean
    by = {"en": TOY_RECORDS[:2], "ja": TOY_RECORDS[2:]}
    g_all = actsvd.activation_grams(model, scores.build_balanced_calibration(tok, by), names=NAMES)
    for n in NAMES:
        want = 0
        for recs in by.values():
            bt = scores.build_calibration(tok, recs)
            g = actsvd.activation_grams(model, bt, names=[n])[n][1]
            want = want + g / (2 * int(sum((x["labels"][:, 1:] != -100).sum() for x in bt)))
        torch.testing.assert_close(g_all[n][1], want, rtol=1e-5, atol=1e-7)
