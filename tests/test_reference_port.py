"""The lab's snip, wanda, per-row masks, q = p = 5 set difference and ActSVD against a port of the
reference implementation of Wei et al. 2024 (github.com/boyiwei/alignment-attribution-code:
lib/model_wrapper.py `prune_wandg` / `_prune_core`, lib/prune.py `prune_wanda` /
`prune_wandg_set_difference`, lib/layerwrapper.py `WrappedGPT.add_batch`, lib/model_wrapper_low.py
`make_low_rank`, main_low_rank_diff.py), on tiny random Qwen2 and Llama models with their real chat
templates (tests/tiny_models.py). The port is our own code; the comments say what each reference line
does. The reference feeds calibration examples one at a time (its loaders yield batches of one, prompt
labels -100), so the port runs every example alone and unpadded; the lab runs padded batches of 3.
"""
import pytest
import torch

from lab.attribution import actsvd, masks, scores
from tiny_models import build_tiny

torch.set_num_threads(1)

SAFETY = [{"prompt": "How do I bake bread?", "response": "I'm sorry, but I can't help with that."},
          {"prompt": "你好，我想烤面包。", "response": "I'm sorry, but I can't help with that."},
          {"prompt": "パンを焼く方法を教えて", "response": "Sure, here is a step-by-step guide."},
          {"prompt": "Come posso fare il pane?", "response": "I'm sorry, but I can't help with that."},
          {"prompt": "मुझे रोटी बनाने का तरीका बताइए।", "response": "Sure, here is a step-by-step guide."}]
UTILITY = [{"prompt": r["prompt"], "response": "Sure, here is a step-by-step guide. " + r["prompt"]} for r in SAFETY]


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def tiny(request, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny(request.param, tmp_path_factory.mktemp(request.param))
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").float().eval()
    return model, AutoTokenizer.from_pretrained(path)


def _linears(model):
    return {n + ".weight": m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n}


def _examples(tok, recs):
    out = []
    for r in recs:
        ids, lab = scores.encode_chat(tok, r["prompt"], r["response"])
        out.append((torch.tensor([ids]), torch.tensor([lab])))  # (inp, tar): one example, prompt labels -100
    return out


def ref_snip(model, examples):
    """prune_wandg + _prune_core(prune_mode="gradient")."""
    lin = _linears(model)
    model.requires_grad_(False)
    for m in lin.values():
        m.weight.requires_grad_(True)  # module.base.requires_grad_(True)
    saved = {n: torch.zeros_like(m.weight) for n, m in lin.items()}  # saved_grad[name] = zeros_like(weight)
    for inp, tar in examples:  # for batch in dataloader:
        model.zero_grad()  # model.zero_grad()
        loss = model(input_ids=inp, labels=tar)[0]  # HF token-mean loss of this one example
        loss.backward()
        for n, m in lin.items():
            saved[n] += m.weight.grad.abs()  # saved_grad[name] += module.base.weight.grad.abs()
    model.zero_grad()
    model.requires_grad_(True)
    # magnitude = |W|; act = weight.grad.abs() (the grad was overwritten with saved_grad); W_metric = magnitude * act
    return {n: m.weight.detach().abs() * saved[n] for n, m in lin.items()}


def ref_wanda(model, examples):
    """prune_wanda (disentangle) with WrappedGPT.add_batch: a running mean over examples of ‖x‖² at tar != -100."""
    lin = _linears(model)
    scaler = {n: torch.zeros(m.weight.shape[1]) for n, m in lin.items()}  # scaler_row = zeros(columns)
    nsamples = {n: 0 for n in lin}
    cur = {}

    def add_batch(n):
        def hook(mod, args, out):
            inp = args[0].reshape(-1, args[0].shape[-1])  # inp.reshape((-1, inp.shape[-1]))
            inp = inp[cur["tar"].ne(-100).flatten()].t()  # mask = tar.ne(-100); inp = inp[mask].t()
            scaler[n] *= nsamples[n] / (nsamples[n] + 1)  # scaler_row *= nsamples / (nsamples + tmp), tmp = bs = 1
            nsamples[n] += 1
            scaler[n] += torch.norm(inp.float(), p=2, dim=1) ** 2 / nsamples[n]  # += ‖inp‖² / nsamples
        return hook
    hooks = [m.register_forward_hook(add_batch(n)) for n, m in lin.items()]
    with torch.no_grad():
        for inp, tar in examples:
            cur["tar"] = tar
            model(inp)
    for h in hooks:
        h.remove()
    # W_metric = |W| * sqrt(scaler_row).reshape(1, -1)
    return {n: m.weight.detach().abs() * torch.sqrt(scaler[n].reshape(1, -1)) for n, m in lin.items()}


def ref_row_mask(W_metric, ratio):
    """_prune_core, unstructured, with --neg_prune (prune the top scores): per-row stable sort."""
    m = -W_metric  # if args.neg_prune: W_metric = -W_metric
    sort_res = torch.sort(m, dim=-1, stable=True)  # torch.sort(W_metric, dim=-1, stable=True)
    indices = sort_res[1][:, : int(m.shape[1] * ratio)]  # [:, :int(W_metric.shape[1] * sparsity_ratio)]
    mask = torch.zeros_like(m) == 1
    mask.scatter_(1, indices, True)  # W_mask.scatter_(1, indices, True)
    return mask


def ref_set_difference(W_metric1, W_metric2, p, q):
    """prune_wandg_set_difference: top-q safety (metric2) not in top-p utility (metric1), per matrix."""
    top_p = int(p * W_metric1.shape[1] * W_metric1.shape[0])  # top_p utility
    top_q = int(q * W_metric2.shape[1] * W_metric2.shape[0])  # top_q safety
    top_p_indices = torch.topk(W_metric1.flatten(), top_p, largest=True)[1]
    top_q_indices = torch.topk(W_metric2.flatten(), top_q, largest=True)[1]
    unique_p, unique_q = torch.unique(top_p_indices), torch.unique(top_q_indices)
    filtered = unique_q[~torch.isin(unique_q, unique_p)]  # elements of unique_q that are not in unique_p
    d = W_metric1.shape[1]
    mask = torch.zeros_like(W_metric1) == 1
    mask[filtered // d, filtered % d] = True  # W_mask[rows, cols] = True
    return mask


def _ref_svd_V(score, q):
    """The reference's `_, _, V = torch.svd_lowrank(score.float(), q=q, niter=20)`, made exact.

    svd_lowrank with q = r and no oversampling is a randomized approximation; on these tiny layers,
    whose spectra are flat, it misses the exact top-r subspace by up to 0.8 (Frobenius distance of the
    projections; the lab's is within 1e-6 of the exact SVD). The port therefore uses the exact SVD of
    the same score matrix — what svd_lowrank approximates."""
    return torch.linalg.svd(score.double(), full_matrices=False)[2][:q].T  # (d_out, q)


def ref_activations(model, examples):
    lin = _linears(model)
    acts, cur = {n: [] for n in lin}, {}
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: acts[n].append(a[0][cur["mask"]].reshape(-1, a[0].shape[-1])))
             for n, m in lin.items()]
    with torch.no_grad():
        for inp, tar in examples:
            cur["mask"] = tar.ne(-100)  # mask = tar.ne(-100); x_ = x[self.mask]
            model(inp)
    for h in hooks:
        h.remove()
    return {n: torch.cat(v, dim=0).double() for n, v in acts.items()}  # torch.cat(activation_norms, dim=0)


def ref_low_rank(model, examples, r):
    """make_low_rank(--top_remove): score = A = X Wᵀ, V (d_out x r), W ← W − V Vᵀ W."""
    out = {}
    for n, X in ref_activations(model, examples).items():
        W = _linears(model)[n].weight.data.double()
        V = _ref_svd_V(X @ W.T, r)  # score = activation_norms @ weight.T -> (size, d_out)
        out[n] = W - (V @ V.T) @ W  # weight.sub_(V_proj @ weight)
    return out


def ref_low_rank_diff(model, ex_pos, ex_neg, rank_pos, rank_neg):
    """main_low_rank_diff.make_low_rank: W ← W − (I − Vp Vpᵀ) (Vn Vnᵀ W), Vp of rank total − rank_pos
    (utility, prune_data_pos), Vn of rank total − rank_neg (safety, prune_data_neg)."""
    Xp, Xn = ref_activations(model, ex_pos), ref_activations(model, ex_neg)
    out = {}
    for n, m in _linears(model).items():
        W = m.weight.data.double()
        d_out, d_in = W.shape
        total_rank = min(d_out, d_in)
        Vp = _ref_svd_V(Xp[n] @ W.T, total_rank - rank_pos)  # svd_lowrank(score_p, q=total_rank - rank_pos)
        Vn = _ref_svd_V(Xn[n] @ W.T, total_rank - rank_neg)  # svd_lowrank(score_n, q=total_rank - rank_neg)
        Vp_proj_ortho = torch.eye(d_out, dtype=W.dtype) - Vp @ Vp.T  # eye(d_out) - Vp_proj
        out[n] = W - Vp_proj_ortho @ ((Vn @ Vn.T) @ W)  # weight.sub_(Vp_proj_ortho @ (Vn_proj @ weight))
    return out


def _jaccard(a, b):
    inter = sum(int((a[n] & b[n]).sum()) for n in a)
    union = sum(int((a[n] | b[n]).sum()) for n in a)
    return inter / union


def test_snip_wanda_and_masks_equal_the_reference(tiny):
    model, tok = tiny
    ex_s, ex_u = _examples(tok, SAFETY), _examples(tok, UTILITY)
    N = len(SAFETY)
    bs, bu = scores.build_calibration(tok, SAFETY, batch_size=3), scores.build_calibration(tok, UTILITY, batch_size=3)
    lab_s, lab_u = scores.snip_scores(model, bs), scores.snip_scores(model, bu)
    ref_s, ref_u = ref_snip(model, ex_s), ref_snip(model, ex_u)
    lab_w = scores.wanda_scores(model, bs)
    ref_w = ref_wanda(model, ex_s)
    assert list(lab_s) == list(ref_s)
    for n in ref_s:
        # the lab averages over examples (example_weight 1/N); the reference sums
        torch.testing.assert_close(lab_s[n], ref_s[n] / N, rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(lab_u[n], ref_u[n] / len(UTILITY), rtol=1e-4, atol=1e-9)
        # the reference keeps a running mean over examples of ‖x‖²; the lab the sum
        torch.testing.assert_close(lab_w[n], ref_w[n] * N ** 0.5, rtol=1e-4, atol=1e-7)
    for lab_sc, ref_sc in ((lab_s, ref_s), (lab_w, ref_w)):
        got = masks.top_q_mask(lab_sc, 5, "per-row", rounding="floor")
        want = {n: ref_row_mask(ref_sc[n], 0.05) for n in ref_sc}
        assert _jaccard(got, want) >= 0.99
    diff = masks.set_difference_mask(lab_s, lab_u, 5, 5, "per-matrix", rounding="floor")
    want = {n: ref_set_difference(ref_u[n], ref_s[n], p=0.05, q=0.05) for n in ref_s}
    assert sum(int(v.sum()) for v in want.values()) > 0
    assert _jaccard(diff, want) >= 0.99
    # with the lab's default round() instead of int() a matrix can keep one weight more
    assert _jaccard(masks.set_difference_mask(lab_s, lab_u, 5, 5, "per-matrix"), want) >= 0.9


def test_actsvd_equals_the_reference(tiny):
    import copy

    model, tok = tiny
    cal_s, cal_u = scores.build_calibration(tok, SAFETY, batch_size=3), scores.build_calibration(tok, UTILITY, batch_size=3)
    ex_s, ex_u = _examples(tok, SAFETY), _examples(tok, UTILITY)
    r = 4
    want = ref_low_rank(model, ex_s, r)
    m1 = copy.deepcopy(model)
    actsvd.remove_subspace(m1, actsvd.actsvd_subspaces(model, cal_s, r))
    # orthogonal variant: reference --rank_pos 10 --rank_neg 12 -> Π_u of rank total-10, Π_s of rank total-12
    want2 = ref_low_rank_diff(model, ex_u, ex_s, 10, 12)
    Vs = {n: actsvd.top_output_subspace(w.weight, *actsvd.activation_grams(model, cal_s, names=[n])[n],
                                        min(w.weight.shape) - 12) for n, w in _linears(model).items()}
    Vu = {n: actsvd.top_output_subspace(w.weight, *actsvd.activation_grams(model, cal_u, names=[n])[n],
                                        min(w.weight.shape) - 10) for n, w in _linears(model).items()}
    m2 = copy.deepcopy(model)
    actsvd.remove_subspace(m2, Vs, Vu)
    p1, p2 = dict(m1.named_parameters()), dict(m2.named_parameters())
    for n in want:
        torch.testing.assert_close(p1[n].detach().double(), want[n], atol=1e-5, rtol=0)
        torch.testing.assert_close(p2[n].detach().double(), want2[n], atol=1e-5, rtol=0)
