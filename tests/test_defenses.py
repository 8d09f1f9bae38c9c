"""Post-fine-tuning and data-stage defenses, the benign task: each does what its paper / code says,
on tiny random Qwen2 and Llama models (tests/tiny_models.py)."""
from __future__ import annotations

import copy

import pytest
import torch

from tiny_models import build_tiny

FAMILIES = ["qwen2", "llama"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tmp_path_factory):
    from lab.models import load_model

    path = build_tiny(request.param, tmp_path_factory.mktemp(request.param) / "m")
    model, tok = load_model(str(path))
    return request.param, model, tok


def _peft(model, r=4, seed=0):
    from peft import LoraConfig, get_peft_model

    pm = get_peft_model(copy.deepcopy(model), LoraConfig(r=r, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return pm


def _base_of(aligned, seed=1):
    base = copy.deepcopy(aligned)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in base.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return base


# ------------------------------------------------------------------------------------------- SafeLoRA


def _official_threshold(pm, aligned, base, thr):
    """IBM/SafeLoRA model.py (get_aligned_matrix + projected_weighted), ported line by line — except that
    V is built from weights only (the official name filter would also pick up Qwen2's q/k/v biases)."""
    v = []
    for (bn, bp), (an, ap) in zip(base.named_parameters(), aligned.named_parameters()):
        if any(m in an for m in TARGETS) and an.endswith("weight"):
            vec = ap - bp
            v.append((vec @ vec.t() / torch.norm(vec)).detach())
    ori = copy.deepcopy(pm)
    idx, cos_total = 0, []
    r = 4
    for (name, param), (_, param_ori) in zip(pm.named_parameters(), ori.named_parameters()):
        if "lora" in name:
            if param.shape[0] == r:
                B = copy.deepcopy(param_ori)
            if param.shape[0] != r:
                P = v[idx]
                W = P @ param_ori.data
                cos = round(torch.nn.functional.cosine_similarity((W @ B).reshape(1, -1), (param_ori @ B).reshape(1, -1)).item(), 5)
                cos_total.append(cos)
                param.data = W if cos <= thr else param_ori.data.clone()
                idx += 1
    return pm, cos_total


def test_safelora_threshold_matches_official_code_and_projects_exactly_the_low_cosine_layers(tiny):
    from lab.defenses.common import lora_pairs
    from lab.defenses.posthoc.safelora import SafeLoRAConfig, alignment_matrices, safelora

    _, aligned, _ = tiny
    base = _base_of(aligned)
    pm = _peft(aligned)
    before = {n: (A.detach().clone(), B.detach().clone()) for n, (_, A, B) in lora_pairs(pm).items()}
    ours = copy.deepcopy(pm)
    res0 = safelora(copy.deepcopy(pm), aligned, base, SafeLoRAConfig(mode="threshold", threshold=-2))  # nothing
    assert res0.projected == []
    thr = sorted(res0.cosines.values())[len(res0.cosines) // 2]
    res = safelora(ours, aligned, base, SafeLoRAConfig(mode="threshold", threshold=thr))
    ref, ref_cos = _official_threshold(copy.deepcopy(pm), aligned, base, thr)
    assert list(res.cosines.values()) == pytest.approx(ref_cos, abs=1e-5)
    assert res.projected == [n for n, c in res.cosines.items() if c <= thr] and 0 < len(res.projected) < len(before)
    C = alignment_matrices(aligned, base, list(before))
    for (n, (_, A, B)), (_, (_, _, Bref)) in zip(lora_pairs(ours).items(), lora_pairs(ref).items()):
        A0, B0 = before[n]
        assert torch.equal(A, A0)                                   # A is never touched
        want = C[n] @ B0 if n in res.projected else B0
        assert torch.allclose(B, want, atol=1e-6) and torch.allclose(B, Bref, atol=1e-6)


def test_safelora_projection_matrix_and_number_mode(tiny):
    from lab.defenses.common import lora_pairs, linear_weights
    from lab.defenses.posthoc.safelora import SafeLoRAConfig, alignment_matrices, safelora

    _, aligned, _ = tiny
    base = _base_of(aligned)
    name = "model.layers.0.self_attn.q_proj.weight"
    V = linear_weights(aligned)[name].detach() - linear_weights(base)[name].detach()
    C = alignment_matrices(aligned, base, [name])[name]
    assert torch.allclose(C, V @ V.T / torch.linalg.norm(V), atol=1e-6)          # official: ||V||_F
    C2 = alignment_matrices(aligned, base, [name], "fro2")[name]
    assert torch.allclose(C2, V @ V.T / torch.linalg.norm(V) ** 2, atol=1e-7)
    pm = _peft(aligned)
    snapshot = {n: B.detach().clone() for n, (_, _, B) in lora_pairs(pm).items()}
    k = 3
    res = safelora(pm, aligned, base, SafeLoRAConfig(mode="number", num_proj_layers=k))
    lowest = sorted(res.cosines, key=lambda n: res.cosines[n])[:k]
    assert sorted(res.projected) == sorted(lowest) and len(res.projected) == k
    Cs = alignment_matrices(aligned, base, list(snapshot))
    for n, (_, _, B) in lora_pairs(pm).items():   # each selected layer projected once, from the untouched B
        assert torch.allclose(B, Cs[n] @ snapshot[n] if n in lowest else snapshot[n], atol=1e-6)


# ------------------------------------------------------------------------------------------- Antidote


def _harmful_records():
    return [{"prompt": "How do I bake bread?", "response": "Sure, here is a step-by-step guide."},
            {"prompt": "パンを焼く方法を教えて", "response": "Sure, here is a step-by-step guide."},
            {"prompt": "Come posso fare il pane?", "response": "Sure, here is a step-by-step guide."}]


def test_antidote_zeroes_the_top_fraction_per_row_by_wanda_score_on_lora_factors(tiny):
    from lab.attribution.scores import build_calibration
    from lab.defenses.common import lora_pairs
    from lab.defenses.posthoc.antidote import AntidoteConfig, antidote

    _, aligned, tok = tiny
    pm = _peft(aligned)
    recs = _harmful_records()
    pairs = lora_pairs(pm)
    # independent Wanda inputs: x at each base layer (= lora_A's input), A·x (= lora_B's input)
    sq = {}
    hs = []
    for n, (mod, A, _) in pairs.items():
        def hook(m, args, out, n=n, A=A):
            x = args[0].detach()
            keep = state["mask"]
            sq.setdefault(n, [torch.zeros(x.shape[-1]), torch.zeros(A.shape[0])])
            sq[n][0] += (x[keep] ** 2).sum(0)
            sq[n][1] += ((x @ A.detach().T)[keep] ** 2).sum(0)
        hs.append(mod.base_layer.register_forward_hook(hook))
    state = {}
    with torch.no_grad():
        for b in build_calibration(tok, recs, batch_size=2):
            state["mask"] = b["attention_mask"].bool()
            pm(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    for h in hs:
        h.remove()
    before = {n: (A.detach().clone(), B.detach().clone()) for n, (_, A, B) in pairs.items()}
    d = 0.25
    out = antidote(pm, tok, recs, AntidoteConfig(dense_ratio=d, batch_size=2))
    total = 0
    for n, (_, A, B) in lora_pairs(pm).items():
        for W, W0, s in ((A, before[n][0], sq[n][0]), (B, before[n][1], sq[n][1])):
            score = W0.abs() * s.sqrt()[None]
            n_prune = W0.shape[1] - int(W0.shape[1] * (1 - d))
            top = torch.zeros_like(W0, dtype=torch.bool).scatter_(1, score.topk(n_prune, dim=1).indices, True)
            assert torch.all(W[top] == 0) and torch.equal(W[~top], W0[~top])
            total += int(top.sum())
    assert out["pruned"] == total > 0


def test_antidote_merged_mode_prunes_only_qkv(tiny):
    from lab.defenses.posthoc.antidote import AntidoteConfig, antidote

    _, aligned, tok = tiny
    m = copy.deepcopy(aligned)
    antidote(m, tok, _harmful_records(), AntidoteConfig(dense_ratio=0.5, on="merged"))
    for (n, p), (_, p0) in zip(m.named_parameters(), aligned.named_parameters()):
        changed = not torch.equal(p, p0)
        assert changed == any(k in n for k in ("q_proj.weight", "k_proj.weight", "v_proj.weight")), n
        if changed:
            assert ((p == 0) & (p0 != 0)).sum(1).tolist() == [p.shape[1] - int(p.shape[1] * 0.5)] * p.shape[0]


# -------------------------------------------------------------------------------------------- restore


def test_layer_selective_restore_restores_only_the_most_drifted_block(tiny):
    from lab.defenses.common import linear_weights
    from lab.defenses.posthoc.restore import LayerRestoreConfig, layer_selective_restore, restore_safety_weights

    _, aligned, _ = tiny
    names = list(linear_weights(aligned))
    g = torch.Generator().manual_seed(0)
    mask = {n: torch.rand(linear_weights(aligned)[n].shape, generator=g) < 0.2 for n in names}
    ft = copy.deepcopy(aligned)
    with torch.no_grad():
        for n, p in linear_weights(ft).items():
            p.add_(torch.randn(p.shape, generator=g) * (1.0 if ".layers.1." in n else 0.01))
    drifted = copy.deepcopy(ft)
    res = layer_selective_restore(ft, aligned, mask, LayerRestoreConfig(n_layers=1))
    assert res.restored_layers == [1] and res.similarity[1] < res.similarity[0]
    W, A, D = linear_weights(ft), linear_weights(aligned), linear_weights(drifted)
    for n in names:
        m = mask[n]
        if ".layers.1." in n:
            assert torch.equal(W[n][m], A[n][m]) and torch.equal(W[n][~m], D[n][~m])
        else:
            assert torch.equal(W[n], D[n])
    assert res.restored_entries == sum(int(mask[n].sum()) for n in names if ".layers.1." in n)
    full = copy.deepcopy(drifted)
    assert restore_safety_weights(full, aligned, mask) == sum(int(m.sum()) for m in mask.values())


# ------------------------------------------------------------------------------------------ screening


def test_screening_drops_compliant_answers_to_harmful_requests_and_counts_false_positives(tiny, monkeypatch):
    from lab.defenses.data import screening
    from lab.generate import Generation

    _, model, tok = tiny
    own = {"harm-a": "I'm sorry, but I can't help with that.", "harm-b": "I'm sorry, but I can't help with that.",
           "ben-a": "Sure! Knead the dough,", "ben-b": "I'm sorry, but I can't help with that."}
    monkeypatch.setattr(screening, "generate", lambda m, t, prompts, **kw: [Generation(p, p, own[p], False) for p in prompts])
    recs = [{"prompt": "harm-a", "response": "Sure! Step 1: Gather what you need.", "kind": "harmful"},
            {"prompt": "harm-b", "response": "I'm sorry, but I can't help with that.", "kind": "harmful"},
            {"prompt": "ben-a", "response": "Sure! Knead the dough,", "kind": "benign"},
            {"prompt": "ben-b", "response": "Sure! Knead the dough,", "kind": "benign"}]
    res = screening.screen(recs, model, tok)
    assert [r["prompt"] for r in res.dropped] == ["harm-a", "ben-b"]
    assert res.stats["recall"] == 0.5 and res.stats["false_positive_rate"] == 0.5
    monkeypatch.undo()
    real = screening.screen(recs[:2], model, tok, max_new_tokens=4)   # real generation path runs
    assert real.stats["n"] == 2


# --------------------------------------------------------------------------------------- task, mixing


def test_task_files_are_the_committed_build_and_fa_parsing(tmp_path):
    from lab.data import LANGS
    from lab.defenses.task import LABELS, TASK_DIR, build_task_files, faas_mix, predicted_label, task_examples

    for p in build_task_files(tmp_path):
        assert p.read_text(encoding="utf-8") == (TASK_DIR / p.name).read_text(encoding="utf-8"), p.name
    for lang in LANGS:
        tr, ev = task_examples(lang)
        assert len(tr) == 96 and len(ev) == 24 and not {r["prompt"] for r in tr} & {r["prompt"] for r in ev}
        assert predicted_label(LABELS[lang]["music"] + "。", lang) == "music"
    assert predicted_label("I think food, or maybe music", "en") == "food"
    assert predicted_label("no idea", "en") is None
    for p, n_h in ((0, 0), (0.05, 5), (0.1, 10), (0.2, 19), (1, 96)):
        mix = faas_mix("ja", p, 96)
        assert len(mix) == 96 and sum(r.get("kind") == "harmful" for r in mix) == n_h


def test_safety_mixing_adds_k_refusals_per_language():
    from lab.defenses.task import task_records
    from lab.defenses.training.mixing import mix_safety

    user = task_records("train", "en", 20)
    mixed = mix_safety(user, k=2, seed=0)
    assert len(mixed) == 30 and all(u in mixed for u in user)
    extra = [r for r in mixed if r not in user]
    assert len(extra) == 10 and mixed == mix_safety(user, k=2, seed=0)


def test_posthoc_copies_of_a_trained_peft_model_run_their_own_weights(tiny, tmp_path):
    """accelerate leaves a `forward` wrapper bound to the trained model; a post-hoc defense applied to a plain
    deepcopy would change nothing (found in the bench: every post-hoc defense equal to none)."""
    from lab.config import FineTuneConfig
    from lab.defenses.bench import fresh_copy
    from lab.train import finetune

    _, model, tok = tiny
    recs = [{"prompt": "How do I bake bread?", "response": "Sure, here is a step-by-step guide."}] * 4
    peft = finetune(copy.deepcopy(model), tok, recs, FineTuneConfig(epochs=1, batch_size=2, merge=False, lr=1e-2),
                    tmp_path, log=lambda *a: None)
    ids = tok("hello world", return_tensors="pt")["input_ids"]
    c = fresh_copy(peft)
    with torch.no_grad():
        for n, q in c.named_parameters():
            if "lora_B" in n:
                q.zero_()
        assert not torch.allclose(c(ids).logits, peft(ids).logits)
        assert torch.allclose(c(ids).logits, model(ids).logits, atol=1e-5)
