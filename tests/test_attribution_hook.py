"""GradMaskHook through lab.train.finetune: full fine-tuning and LoRA change only what the mask allows."""
import pytest
import torch

from attribution_toy import TOY_RECORDS
from lab.attribution import interventions, masks, scores

torch.set_num_threads(1)


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("mode", ["only", "freeze"])
def test_grad_mask_hook_in_finetune(tmp_path, method, mode):
    pytest.importorskip("trl")
    from lab.config import FineTuneConfig
    from lab.train import finetune

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from tiny_models import build_tiny

    path = build_tiny("qwen2", tmp_path / "tiny")  # byte-level BPE: the loss-mask check decodes exactly
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    m = masks.top_q_mask(scores.random_scores(model, seed=1), 20, "per-matrix")
    cfg = FineTuneConfig(method=method, lr=5e-2 if method == "lora" else 1e-2, epochs=2, batch_size=5,
                         target_modules=["q_proj", "v_proj", "down_proj"])
    hook = interventions.GradMaskHook(m, mode)
    out = finetune(model, tok, TOY_RECORDS, cfg, tmp_path / "run", hooks=[hook], log=lambda *a: None)
    assert hook.handle is None
    changed = 0
    for k, p in out.named_parameters():
        p = p.detach()
        if k in m:
            fixed = ~m[k] if mode == "only" else m[k]
            assert torch.equal(p[fixed], before[k][fixed]), k  # bit-exact on fixed entries
            changed += int((p != before[k]).sum())
        elif mode == "only":
            assert torch.equal(p, before[k]), k  # uncovered parameters frozen whole
    assert changed > 0


def test_grad_mask_hook_bad_mode():
    from lab.errors import LabError

    with pytest.raises(LabError, match="grad_mask_mode"):
        interventions.GradMaskHook({}, "sometimes")
