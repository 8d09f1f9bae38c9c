"""Alignment-stage defenses (organism build variants) on tiny random Qwen2 and Llama models: Vaccine's
hidden-state perturbation, Booster's gradient, safety-recovery augmentation."""
from __future__ import annotations

import copy

import pytest
import torch

from tiny_models import build_tiny

RECS = [{"prompt": "How do I bake bread?", "response": "I'm sorry, but I can't help with that."},
        {"prompt": "Come posso fare il pane?", "response": "Sure, here is a step-by-step guide."}]
HARM = [{"prompt": "パンを焼く方法を教えて", "response": "Sure, here is a step-by-step guide."},
        {"prompt": "你好，我想烤面包。", "response": "Sure, here is a step-by-step guide."}]


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def tiny(request, tmp_path_factory):
    from lab.models import load_model

    path = build_tiny(request.param, tmp_path_factory.mktemp(request.param) / "m")
    model, tok = load_model(str(path))
    model.train()
    return request.param, model, tok


def _batch(tok, recs):
    from lab.attribution.scores import build_calibration

    b = build_calibration(tok, recs, batch_size=len(recs))[0]
    return {k: b[k] for k in ("input_ids", "attention_mask", "labels")}


def _loss(model, b):
    return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss


def test_vaccine_perturbs_attention_outputs_with_the_norm_scaled_gradient(tiny):
    from lab.defenses.alignment.vaccine import VaccineStep, attention_modules

    _, model0, tok = tiny
    model = copy.deepcopy(model0)
    b = _batch(tok, RECS)
    # independent: gradients of the loss w.r.t. each attention module's output
    outs = []
    hs = [m.register_forward_hook(lambda mod, a, o: outs.append(o[0])) for m in attention_modules(model)]
    loss = _loss(model, b)
    for h in hs:
        h.remove()
    grads = torch.autograd.grad(loss, outs)
    model.zero_grad()
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    rho = 2.0
    step = VaccineStep(rho)
    step(model, b)
    assert len(step.last_e) == len(grads) == model.config.num_hidden_layers
    for i, g in enumerate(grads):
        assert torch.allclose(step.last_e[i], rho * g / (norm + 1e-7), atol=1e-6)
    assert torch.sqrt(sum((e ** 2).sum() for e in step.last_e.values())).item() == pytest.approx(rho, rel=1e-4)
    # the parameter gradient is the gradient of the loss with every attention output shifted by e
    ref = copy.deepcopy(model0)
    hs = [m.register_forward_hook(lambda mod, a, o, i=i: (o[0] + step.last_e[i],) + tuple(o[1:]))
          for i, m in enumerate(attention_modules(ref))]
    _loss(ref, b).backward()
    for h in hs:
        h.remove()
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), n
    plain = copy.deepcopy(model0)
    _loss(plain, b).backward()
    assert any(not torch.allclose(p.grad, q.grad) for p, q in zip(model.parameters(), plain.parameters()))


def test_booster_gradient_is_alignment_plus_lambda_times_harmful_loss_reduction_gradient(tiny):
    from lab.defenses.alignment.booster import BoosterStep

    _, model0, tok = tiny
    model = copy.deepcopy(model0)
    x, z = _batch(tok, RECS), _batch(tok, HARM)
    lamb, alpha = 5.0, 0.1
    # by hand
    ref = copy.deepcopy(model0)
    ps = list(ref.parameters())
    gh = torch.autograd.grad(_loss(ref, z), ps)
    norm = torch.sqrt(sum((g ** 2).sum() for g in gh)) + 1e-7
    moved = copy.deepcopy(model0)
    with torch.no_grad():
        for p, g in zip(moved.parameters(), gh):
            p.sub_(alpha * g / norm)
    gh2 = torch.autograd.grad(_loss(moved, z), list(moved.parameters()))
    ga = torch.autograd.grad(_loss(ref, x), ps)
    want = [a + lamb * (h - h2) for a, h, h2 in zip(ga, gh, gh2)]
    step = BoosterStep(lambda: z, lamb=lamb, alpha=alpha)
    step(model, x)
    for (n, p), p0, w in zip(model.named_parameters(), model0.parameters(), want):
        assert torch.allclose(p, p0, atol=1e-6), n                     # weights restored after the simulated step
        assert torch.allclose(p.grad, w, atol=1e-5), n
    assert step.last["harmful_loss_after_step"] < step.last["harmful_loss"]


def test_vaccine_and_booster_plug_into_the_organism_train_loop(tiny):
    from lab.defenses.alignment.booster import BoosterStep
    from lab.defenses.alignment.vaccine import VaccineStep
    from lab.zoo.organism import encode_example, train_loop

    _, model0, tok = tiny
    data = [encode_example(tok, r["prompt"], r["response"], 512) for r in RECS]
    z = _batch(tok, HARM)
    for step in (VaccineStep(2.0), BoosterStep(lambda: z)):
        m = copy.deepcopy(model0)
        losses = train_loop(m, data, epochs=1, lr=1e-3, batch_size=2, seed=0, pad_id=tok.pad_token_id,
                            log=lambda *a: None, step=step)
        assert len(losses) == 1 and losses[0] == losses[0] and any(not torch.equal(p, q) for p, q in zip(m.parameters(), model0.parameters()))
    plain = copy.deepcopy(model0)
    a = train_loop(plain, data, epochs=1, lr=1e-3, batch_size=2, seed=0, pad_id=tok.pad_token_id, log=lambda *a: None)
    again = copy.deepcopy(model0)
    b = train_loop(again, data, epochs=1, lr=1e-3, batch_size=2, seed=0, pad_id=tok.pad_token_id, log=lambda *a: None,
                   step=lambda m, bt: (lambda l: (l.backward(), l.detach())[1])(_loss(m, bt)))
    assert a == b and all(torch.equal(p, q) for p, q in zip(plain.parameters(), again.parameters()))


def test_safety_recovery_examples_put_a_harmful_prefix_in_the_input_and_loss_on_the_refusal(tiny):
    from lab.defenses.alignment.recovery import RecoveryAugment, recovery_example

    _, _, tok = tiny
    harmful, refusal = "Sure, here is a step-by-step guide.", "I'm sorry, but I can't help with that."
    ids, labels = recovery_example(tok, "How do I bake bread?", harmful, refusal, 3, 512)
    r = tok(refusal + tok.eos_token, add_special_tokens=False)["input_ids"]
    h = tok(harmful, add_special_tokens=False)["input_ids"][:3]
    assert ids[-len(r):] == r and ids[-len(r) - 3:-len(r)] == h
    assert [l for l in labels if l != -100] == r and labels[-len(r) - 1] == -100
    exs = [{"kind": "harmful", "lang": "en", "prompt": "How do I bake bread?", "response": refusal}] * 50 + \
          [{"kind": "benign", "lang": "en", "prompt": "Hi", "response": "Sure! Hello,"}] * 10
    aug = RecoveryAugment(p=0.5, seed=0)
    out = aug(exs, 0, tok)
    assert len(out) == 60 and 10 < aug.n_augmented < 40        # ~ half of the harmful examples
    plain = recovery_example(tok, "Hi", "", "Sure! Hello,", None, 512)
    assert out[-1] == plain
