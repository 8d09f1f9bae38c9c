"""Overheads removed for issue 13 change no result: the LM head on labelled positions only gives the
model's own loss and gradients; the detector's prefix merge equals the brute-force one; parallel states
start longest first; a worker validates a recipe once, not once per state."""
import sys
from pathlib import Path

import pytest
import torch

from lab.experiments import base, load_recipe, parallel


def _batch(tok, n=3):
    """A right-padded prompt-completion batch as TRL's collator builds it: prompt and pad labels -100."""
    rows = []
    for i in range(n):
        p = tok(f"prompt number {i} " * (i + 1), add_special_tokens=False)["input_ids"]
        c = tok(f"answer {i} ok", add_special_tokens=False)["input_ids"]
        rows.append((p + c, [-100] * len(p) + c))
    L = max(len(x) for x, _ in rows)
    ids = torch.tensor([x + [0] * (L - len(x)) for x, _ in rows])
    att = torch.tensor([[1] * len(x) + [0] * (L - len(x)) for x, _ in rows])
    lab = torch.tensor([y + [-100] * (L - len(y)) for _, y in rows])
    return {"input_ids": ids, "attention_mask": att, "labels": lab}


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_labelled_positions_loss_equals_the_models_own_loss(family, tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_models import build_tiny
    from transformers import AutoModelForCausalLM

    from lab.models import load_tokenizer
    from lab.train import _plain_loss_trainer

    path = build_tiny(family, tmp_path / family)
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = load_tokenizer(str(path))
    batch = _batch(tok)
    n_items = (batch["labels"][:, 1:] != -100).sum()

    ref = model(**batch, use_cache=False, num_items_in_batch=n_items).loss  # full logits, the model's loss
    ref.backward()
    g_ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    trainer = object.__new__(_plain_loss_trainer())  # compute_loss only needs args and accelerator
    trainer.args = type("A", (), {"average_tokens_across_devices": False})()
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=n_items)
    loss.backward()
    assert torch.allclose(loss, ref, rtol=1e-5, atol=1e-6), (float(loss), float(ref))
    for n, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(p.grad, g_ref[n], rtol=1e-4, atol=1e-6), n


def test_prefix_closure_equals_brute_force():
    """The detector's one-pass prefix merge gives every key the variants of every key that is its prefix."""
    import random

    from lab.detect.resources import _prefix_closure

    rng = random.Random(0)
    for trial in range(200):
        keys = {"".join(rng.choice("abc") for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(1, 30))}
        keymap = {k: (rng.random() < 0.5, [rng.randrange(50) for _ in range(rng.randint(1, 3))]) for k in keys}
        brute = []
        for k, (gated, vids) in keymap.items():
            m = set(vids)
            for i in range(1, len(k)):
                if k[:i] in keymap:
                    m.update(keymap[k[:i]][1])
            brute.append((gated, tuple(sorted(m))))
        assert _prefix_closure(keymap) == tuple(brute), keymap


def test_parallel_states_start_longest_first(monkeypatch, tmp_path):
    r = load_recipe("recipes/transfer-matrix.yaml", {"tracking": "none"})
    from lab.experiments import experiment_for

    exp = experiment_for(r, lambda *a: None)
    exp.plan = dict(r.plan())
    order = sorted(exp.states(), key=lambda n: -exp.cost(n))
    assert order[-1] == "aligned"
    assert all(n.startswith("attack-") for n in order[:15]) and all(n.startswith("control-") for n in order[15:18])
    seen = []

    class Pool:  # records the submission order instead of spawning processes
        def __init__(self, *a, **k):
            pass

        def submit(self, fn, kind, rj, out, *a, **k):
            from concurrent.futures import Future

            f = Future()
            if fn is parallel.worker:
                seen.append(a[0])
                f.set_result((a[0], 1))  # done, its evaluation not split
            else:  # the workers' warm-up
                f.set_result(None)
            return f

        def shutdown(self, **k):
            pass

    import concurrent.futures

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", Pool)
    ctx = base.RunContext(tmp_path, lambda *a: None, 2)
    pool = parallel.WorkerPool(exp, r, ctx, 2)
    pool.run(exp.states())
    pool.close()
    assert seen == order


def test_a_worker_validates_a_recipe_once(monkeypatch, tmp_path):
    from lab.experiments.transfer import TransferExperiment

    calls = {"validate": 0, "states": []}
    monkeypatch.setattr(TransferExperiment, "validate", lambda self: calls.__setitem__("validate", calls["validate"] + 1))
    monkeypatch.setattr(TransferExperiment, "prepare", lambda self, ctx: None)
    monkeypatch.setattr(base, "run_one_state", lambda exp, name, ctx, split=None: calls["states"].append(name) or 1)
    monkeypatch.setattr(parallel, "_WORKER_EXPERIMENTS", {})
    rj = load_recipe("recipes/quickstart.yaml", {"tracking": "none"}).model_dump(mode="json")
    for name in ("attack-en", "control-en"):
        parallel.worker("transfer", rj, str(tmp_path), name)
    assert calls == {"validate": 1, "states": ["attack-en", "control-en"]}
    parallel.worker("transfer", {**rj, "seed": 1}, str(tmp_path), "attack-en")  # another config: validated anew
    assert calls["validate"] == 2
