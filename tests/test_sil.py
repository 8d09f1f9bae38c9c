"""SIL (Poppi et al.): scores against a direct per-example autograd computation of
|Δθ| ⊙ E_x|∇L(x)|, masks per attack language, cross-language overlap against random masks."""
import pytest
import torch
import torch.nn.functional as F

from attribution_toy import TOY_RECORDS, tiny_model, tiny_tokenizer
from lab.attribution import masks, scores, sil
from lab.errors import LabError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _attacked(seed, scale=0.02, frac=0.3):
    """The aligned tiny model with a sparse random change (a stand-in for an attack's update)."""
    m = tiny_model("qwen2", seed=0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("proj.weight"):
                keep = torch.rand(p.shape, generator=g) < frac
                p.add_(scale * torch.randn(p.shape, generator=g) * keep)
    return m


def _direct(attacked, grad_model, aligned, tok, recs):
    params = dict(grad_model.named_parameters())
    names = [n for n in params if n.endswith("proj.weight")]
    acc = {n: torch.zeros_like(params[n]) for n in names}
    for r in recs:
        ids, lab = scores.encode_chat(tok, r["prompt"], r["response"])
        logits = grad_model(input_ids=torch.tensor([ids])).logits[0, :-1]
        tgt = torch.tensor(lab[1:])
        loss = F.cross_entropy(logits[tgt != -100], tgt[tgt != -100])
        for n, gr in zip(names, torch.autograd.grad(loss, [params[n] for n in names])):
            acc[n] += gr.abs() / len(recs)
    att, al = dict(attacked.named_parameters()), dict(aligned.named_parameters())
    return {n: (att[n] - al[n]).detach().abs() * acc[n] for n in names}


@pytest.mark.parametrize("grad_at", ["attacked", "aligned"])
def test_sil_is_weight_change_times_mean_abs_gradient(tok, grad_at):
    aligned, attacked = tiny_model("qwen2", seed=0), _attacked(1)
    batches = scores.build_calibration(tok, TOY_RECORDS, batch_size=2)
    src = aligned if grad_at == "aligned" else {k: v.clone() for k, v in aligned.state_dict().items()}
    got = sil.sil_scores(attacked, src, batches, grad_at=grad_at)
    want = _direct(attacked, attacked if grad_at == "attacked" else aligned, aligned, tok, TOY_RECORDS)
    assert set(got) == set(want)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-10)
    d = sil.weight_change_scores(attacked, aligned)
    k = "model.layers.1.mlp.down_proj.weight"
    assert ((d[k] == 0) == (got[k] == 0)).float().mean() > 0.99  # unchanged weights score 0 in both
    assert all(p.grad is None for p in attacked.parameters())


def test_sil_masks_and_cross_language_overlap(tok):
    aligned = tiny_model("qwen2", seed=0)
    batches = scores.build_calibration(tok, TOY_RECORDS, batch_size=5)
    s = {lang: sil.sil_scores(_attacked(seed), aligned, batches) for lang, seed in (("en", 1), ("ja", 2), ("zh", 1))}
    m = sil.sil_masks(s, k=20)
    for lang in m:
        assert masks.mask_fraction(m[lang]) == pytest.approx(0.2, abs=0.01)
    assert sil.mask_jaccard(m["en"], m["zh"]) == 1.0  # same attack update -> same localization
    res = sil.cross_language_overlap(m, n_random=2)
    rows = {(r["a"], r["b"]): r for r in res["pairs"]}
    assert rows[("en", "zh")]["jaccard"] == 1.0 and rows[("en", "zh")]["random_jaccard"] < 0.3
    assert rows[("en", "ja")]["jaccard"] < 1.0
    allr = res["all"]
    inter = sum(int(v.sum()) for v in sil.shared_mask(m).values())
    assert allr["intersection"] == inter and 0 < allr["random_intersection"] < inter
    assert allr["union"] >= inter
    with pytest.raises(LabError, match="two languages"):
        sil.cross_language_overlap({"en": m["en"]})


def test_sil_bad_input(tok):
    aligned, other = tiny_model("qwen2", seed=0), tiny_model("qwen2", seed=0, hidden=64)
    batches = scores.build_calibration(tok, TOY_RECORDS[:2])
    with pytest.raises(LabError, match="shape"):
        sil.weight_change_scores(other, aligned)
    with pytest.raises(LabError, match="grad_at"):
        sil.sil_scores(aligned, aligned, batches, grad_at="both")
    with pytest.raises(LabError, match="state dict"):
        sil.sil_scores(aligned, aligned.state_dict(), batches, grad_at="aligned")
