"""Fine-tuning: LoRA (peft) or full, through TRL's SFTTrainer with loss on the assistant's tokens only.

Data go in TRL's conversational prompt-completion form, so completion-only loss works with any chat
template (Qwen's and Llama's ship no `{% generation %}` markers, which `assistant_only_loss` needs).
Before training we check the loss mask: at least one trainable label token per example, and the
trainable tokens decode to the assistant's text — silent masking failures are common in SFT setups.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

from lab.errors import LabError


class FineTuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["lora", "full"] = "lora"
    lr: float = 3e-3
    epochs: int = 5
    batch_size: int = 8
    seed: int = 0
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"
    merge: bool = True
    max_length: int = 256


def check_loss_mask(trainer, tok, records, n: int = 8) -> dict:
    """Abort if an example has no trainable token or its trainable tokens don't decode to its response."""
    ds = trainer.train_dataset
    if "labels" not in ds.column_names:
        raise LabError("fine-tuning: the tokenized dataset carries no labels column; loss would cover the prompt")
    n_tok = 0
    for i in range(min(n, len(ds))):
        ids, labels = ds[i]["input_ids"], ds[i]["labels"]
        kept = [t for t, l in zip(ids, labels) if l != -100]
        if len(kept) == len(ids):
            raise LabError(f"fine-tuning: example {i}: every token is trainable — the prompt is not masked out")
        if not kept:
            raise LabError(f"fine-tuning: example {i} has no trainable label token (prompt longer than max_length?)")
        text = tok.decode(kept, skip_special_tokens=True).strip()
        want = records[i]["response"].strip()
        if text != want and not text.startswith(want[: max(1, len(want) // 2)]):
            raise LabError(f"fine-tuning: trainable tokens of example {i} decode to {text[:80]!r}, "
                           f"not the assistant's text {want[:80]!r} — the chat template / loss mask is wrong")
        n_tok += len(kept)
    return {"checked_examples": min(n, len(ds)), "trainable_tokens": n_tok}


def finetune(model, tok, records: list, cfg: FineTuneConfig, out_dir: Path,
             grad_mask: dict[str, torch.Tensor] | None = None, grad_mask_mode: Literal["only", "freeze"] = "only",
             log=print, callbacks: list | None = None):
    """Fine-tune `model` (modified in place; load a fresh copy per fine-tune) and return the result.

    records: dicts or pydantic models with `prompt` and `response`. LoRA adapters are saved to
    out_dir/adapter; with cfg.merge the returned model has the adapter merged in. callbacks:
    extra transformers TrainerCallbacks (e.g. the benchmark's step timer).
    """
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    records = [r if isinstance(r, dict) else r.model_dump() for r in records]
    if not records:
        raise LabError("fine-tuning: the data set is empty")
    for name in ("transformers", "trl", "peft", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("WANDB_DISABLED", "true")
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                             "completion": [{"role": "assistant", "content": r["response"]}]} for r in records])
    on_gpu = torch.cuda.is_available()
    args = SFTConfig(
        output_dir=str(out_dir / "trainer"), learning_rate=cfg.lr, num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size, seed=cfg.seed, data_seed=cfg.seed, max_length=cfg.max_length,
        completion_only_loss=True, bf16=on_gpu, activation_checkpointing=False, report_to="none",
        save_strategy="no", logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
        weight_decay=0.0, warmup_steps=0, lr_scheduler_type="linear", use_cpu=not on_gpu,
    )
    peft_config = None
    if cfg.method == "lora":
        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                 target_modules=cfg.target_modules, task_type="CAUSAL_LM")
    model.train()
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_config)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    for cb in callbacks or []:
        trainer.add_callback(cb)
    check_loss_mask(trainer, tok, records)
    mask_handle = None
    if grad_mask is not None:  # full: gradient hooks; LoRA: masked forward (see lab.attribution.interventions)
        from transformers import TrainerCallback

        from lab.attribution.interventions import attach_grad_mask

        # LoRA never moves the (frozen) base weights and the masked merge is exact, so only full
        # fine-tuning keeps a snapshot of the fixed entries and writes it back after every step
        full = cfg.method == "full"
        mask_handle = attach_grad_mask(trainer.model, grad_mask, grad_mask_mode, exact=full)
        if full:
            class EnforceMask(TrainerCallback):
                def on_step_end(self, args, state, control, **kw):
                    mask_handle.enforce()

            trainer.add_callback(EnforceMask())
    result = trainer.train()
    if mask_handle is not None:
        mask_handle.remove()
    log(f"  trained {cfg.method}: {result.global_step} steps, final loss {result.training_loss:.4f}")
    model = trainer.model
    if cfg.method == "lora":
        model.save_pretrained(str(out_dir / "adapter"))
        if cfg.merge:
            model = model.merge_and_unload()
    # accelerate leaves an instance-level `forward` wrapper bound to the pre-training object; drop it so
    # copies of the returned model (copy.deepcopy) run their own weights
    for m in (model, getattr(model, "base_model", None)):
        if m is not None and "forward" in vars(m):
            del m.forward
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return model
