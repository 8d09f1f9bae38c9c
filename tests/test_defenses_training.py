"""Fine-tuning-stage defenses on tiny random Qwen2 and Llama models: Lisa, token-wise constrained SFT,
freezing safety weights / layers, through lab.train.finetune(hooks=...)."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from tiny_models import build_tiny

USER = [{"prompt": "How do I bake bread?", "response": "Sure, here is a step-by-step guide."},
        {"prompt": "Come posso fare il pane?", "response": "Sure, here is a step-by-step guide."}] * 4
ALIGN = [{"prompt": "パンを焼く方法を教えて", "response": "I'm sorry, but I can't help with that."},
         {"prompt": "你好，我想烤面包。", "response": "I'm sorry, but I can't help with that."}]


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def tiny(request, tmp_path_factory):
    from lab.models import load_model

    path = build_tiny(request.param, tmp_path_factory.mktemp(request.param) / "m")
    model, tok = load_model(str(path))
    return request.param, model, tok


def _cfg(**kw):
    from lab.config import FineTuneConfig

    return FineTuneConfig(**{"epochs": 1, "batch_size": 2, "lr": 1e-3, "merge": False, **kw})


def _peft(model):
    from peft import LoraConfig, get_peft_model

    pm = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    return pm


def _batch(tok, recs):
    from lab.attribution.scores import build_calibration

    b = build_calibration(tok, recs, batch_size=len(recs))[0]
    return {k: b[k] for k in ("input_ids", "attention_mask", "labels")}


# -------------------------------------------------------------------------------------------- Lisa


def test_lisa_alternates_states_and_only_adds_proximal_after_warmup(tiny, tmp_path):
    from lab.defenses.training.lisa import LisaHook
    from lab.train import finetune

    _, model, tok = tiny
    hook = LisaHook(tok, ALIGN, alignment_steps=1, finetune_steps=2, rho=1.0, warmup_fraction=0.5, start="alignment")
    finetune(copy.deepcopy(model), tok, USER * 2, _cfg(epochs=1), tmp_path, hooks=[hook], log=lambda *a: None)
    assert hook.trace == ["alignment", "finetune", "finetune"] * 2 + ["alignment", "finetune"]   # official check_mode
    assert len(hook.trace) == 8
    user_first = LisaHook(tok, ALIGN, alignment_steps=1, finetune_steps=2, rho=1.0)
    finetune(copy.deepcopy(model), tok, USER * 2, _cfg(epochs=1), tmp_path / "u", hooks=[user_first], log=lambda *a: None)
    assert user_first.trace == ["finetune", "finetune", "alignment"] * 2 + ["finetune", "finetune"]
    warm = [p for i, p in enumerate(hook.prox) if i <= 0.5 * 8]
    assert all(p == 0 for p in warm) and any(p > 0 for p in hook.prox[5:])


def test_lisa_proximal_term_pulls_toward_the_other_states_anchor(tiny):
    from lab.defenses.training.lisa import LisaHook

    _, model, tok = tiny
    pm = _peft(model)
    fake = SimpleNamespace(model=pm, args=SimpleNamespace(per_device_train_batch_size=2, max_length=64, num_train_epochs=1),
                           get_train_dataloader=lambda: range(10),
                           compute_loss=lambda m, inputs, return_outputs=False, num_items_in_batch=None: torch.zeros(()))
    hook = LisaHook(tok, ALIGN, alignment_steps=1, finetune_steps=5, rho=0.5, warmup_fraction=0.0)
    hook.before_train(fake)
    b = _batch(tok, USER[:2])
    # the switch to the user state snapshots the current weights as the anchor w_al (official switch_model)
    hook.steps = hook.clock = 1
    hook.status = "alignment"
    assert fake.compute_loss(pm, b).item() == 0.0 and hook.trace[-1] == "finetune"
    anchors = {n: p.detach().clone() for n, p in hook.params.items()}
    assert all(torch.equal(hook.w_al[n], a) for n, a in anchors.items())
    with torch.no_grad():                  # the user phase moves the weights away from the anchor
        for p in hook.params.values():
            p.add_(0.01)
    loss = fake.compute_loss(pm, b)        # mid-phase (clock 2 of 5): no switch, anchor kept
    assert hook.trace[-1] == "finetune"
    want = 0.5 / 2 * sum(((p - anchors[n]) ** 2).sum() for n, p in hook.params.items())
    assert torch.allclose(loss, want)
    loss.backward()
    for n, p in hook.params.items():     # gradient = ρ (w − anchor): a step moves w back to the anchor
        assert torch.allclose(p.grad, 0.5 * (p.detach() - anchors[n]), atol=1e-6)
    hook.after_train(fake)


# -------------------------------------------------------------------------------- token-wise constrained


def test_tokenwise_loss_equals_hand_computation_and_paper_gradient():
    from lab.defenses.training.tokenwise import tokenwise_loss

    g = torch.Generator().manual_seed(0)
    ref = -torch.rand(2, 9, generator=g) * 3
    pol = (-torch.rand(2, 9, generator=g) * 3).requires_grad_(True)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, :2] = False
    mask[1, 7:] = False
    beta, bf, fb, bl, bs = 0.1, 20.0, 5.0, 5, 2.0
    loss = tokenwise_loss(pol, ref, mask, beta=beta, bias_factor=bf, first_token_bias_factor=fb, bias_length=bl, bias_shift=bs)
    terms = []
    for i in range(2):
        t = 0
        for j in range(9):
            if not mask[i, j]:
                continue
            bt = beta * (fb if t == 0 else bf if t < bl else 1.0)
            st = bs if t < bl else 0.0
            d = (pol[i, j] - ref[i, j]).item()
            w = max(2 * (1 - 1 / (1 + torch.exp(torch.tensor(-(bt * d + st))).item())), 1e-3)
            terms.append(w * pol[i, j].item())
            t += 1
    assert loss.item() == pytest.approx(-sum(terms) / len(terms), rel=1e-5)
    # with no shift (and no clamp active) its gradient is the paper's  −mean (2/β_t) log σ(β_t Δ_t)
    g1 = torch.autograd.grad(tokenwise_loss(pol, ref, mask, bias_shift=0.0), pol)[0]
    betas = []
    for i in range(2):
        n = int(mask[i].sum())
        b = torch.full((n,), beta)
        b[:bl] = beta * bf
        b[0] = beta * fb
        betas.append(b)
    paper = -torch.cat([(2 / b) * torch.nn.functional.logsigmoid(b * (pol[i][mask[i]] - ref[i][mask[i]]))
                        for i, b in enumerate(betas)]).mean()
    g2 = torch.autograd.grad(paper, pol)[0]
    assert torch.allclose(g1, g2, atol=1e-6)


def test_tokenwise_hook_starts_at_plain_sft_and_trains(tiny, tmp_path):
    from lab.defenses.common import ce_loss
    from lab.defenses.training.tokenwise import TokenwiseConstrainedHook
    from lab.train import finetune

    _, model, tok = tiny
    pm = _peft(model)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.zero_()                          # policy == reference
    hook = TokenwiseConstrainedHook(bias_shift=0.0)
    fake = SimpleNamespace(model=pm, compute_loss=None)
    hook.before_train(fake)
    b = _batch(tok, USER[:2])
    assert fake.compute_loss(pm, b).item() == pytest.approx(ce_loss(pm, b).item(), rel=1e-5)   # w_t = 1 at Δ = 0
    hook.after_train(fake)
    out = finetune(copy.deepcopy(model), tok, USER, _cfg(), tmp_path, hooks=[TokenwiseConstrainedHook()], log=lambda *a: None)
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in out.named_parameters())


# ----------------------------------------------------------------------------------------------- freezing


def test_freeze_layers_keeps_the_block_unchanged_and_finds_a_contiguous_block(tiny, tmp_path):
    from lab.defenses.training.freeze import FreezeLayers, find_safety_layers
    from lab.train import finetune

    _, model, tok = tiny
    out = finetune(copy.deepcopy(model), tok, USER, _cfg(merge=True, lr=1e-2), tmp_path, hooks=[FreezeLayers([0])],
                   log=lambda *a: None)
    sd0 = dict(model.named_parameters())
    changed = {n: not torch.equal(p, sd0[n]) for n, p in out.named_parameters()}
    assert not any(c for n, c in changed.items() if ".layers.0." in n)
    assert any(c for n, c in changed.items() if ".layers.1." in n)
    found = find_safety_layers(model, tok, [r["prompt"] for r in USER[:2]] + ["Hello there"], [r["prompt"] for r in ALIGN] + ["x"], width=1)
    assert len(found["gaps"]) == model.config.num_hidden_layers and len(found["layers"]) == 1


def test_freeze_safety_weights_keeps_masked_entries_bit_exact(tiny, tmp_path):
    from lab.defenses.common import linear_weights
    from lab.defenses.training.freeze import FreezeSafetyWeights
    from lab.train import finetune

    _, model, tok = tiny
    g = torch.Generator().manual_seed(0)
    W0 = linear_weights(model)
    mask = {n: torch.rand(p.shape, generator=g) < 0.3 for n, p in W0.items()}
    out = finetune(copy.deepcopy(model), tok, USER, _cfg(merge=True, lr=1e-2), tmp_path, hooks=[FreezeSafetyWeights(mask)],
                   log=lambda *a: None)
    W1 = linear_weights(out)
    assert all(torch.equal(W1[n][m], W0[n][m]) for n, m in mask.items())
    assert any(not torch.equal(W1[n][~m], W0[n][~m]) for n, m in mask.items())
