"""Fine-tuning: LoRA (peft) or full, through TRL's SFTTrainer with loss on the assistant's tokens only.

Data go in TRL's conversational prompt-completion form, so completion-only loss works with any chat
template (Qwen's and Llama's ship no `{% generation %}` markers, which `assistant_only_loss` needs).
Before training we check the loss mask: at least one trainable label token per example, and the
trainable tokens decode to the assistant's text — silent masking failures are common in SFT setups.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
from transformers import TrainerCallback

from lab.config import FineTuneConfig
from lab.errors import LabError


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


class TrainHook:
    """Something that changes how one fine-tune trains, without train.py knowing what it is.

    `before_train(trainer)` runs after the SFTTrainer is built and its loss mask checked; it may add
    TrainerCallbacks or wrap `trainer.compute_loss` by instance assignment. `after_train(trainer)` runs
    after training, before the adapter is saved/merged (undo hooks there). Masks (lab.attribution),
    defenses (lab.defenses) and benchmarks plug in this way.
    """

    def before_train(self, trainer) -> None:
        pass

    def after_train(self, trainer) -> None:
        pass


class Diverged(LabError):
    """The fine-tune produced a non-finite loss or weights, or its loss rose far above where it started."""


class _DivergenceGuard(TrainerCallback):
    """Stop at the first non-finite training loss; keep the per-step losses."""

    def __init__(self):
        self.losses: list[float] = []

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            loss = float(logs["loss"])
            self.losses.append(loss)
            if not math.isfinite(loss):
                raise Diverged(f"fine-tuning diverged: training loss is {loss} at step {state.global_step} "
                               f"(lr={args.learning_rate}); lower the learning rate. No result was recorded.")


@torch.no_grad()
def probe_loss(trainer, n: int = 16) -> float:
    """Mean loss of the model on its first n training examples (eval mode; no RNG is drawn)."""
    ds = trainer.train_dataset
    rows = [ds[i] for i in range(min(n, len(ds)))]
    batch = trainer.data_collator(rows)
    dev = next(trainer.model.parameters()).device
    keep = {k: v.to(dev) for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels", "position_ids")}
    was_training = trainer.model.training
    trainer.model.eval()
    loss = float(trainer.model(**keep).loss)
    trainer.model.train(was_training)
    return loss


def check_diverged(losses: list[float], model, cfg, before: float | None = None, after: float | None = None) -> None:
    """After training: non-finite weights, or a loss far above where it started, mean the run diverged.

    `before`/`after`: the loss on the first training examples before and after training. A fine-tune
    that leaves its own data's loss above 1.5x where it started made the model worse at its own data:
    its answers are degenerate (e.g. full fine-tuning at lr=10 answers "nnnn..."), not an attack
    result. (Step losses are not compared: a schedule that alternates data, like Lisa's, rises and
    falls by design; a non-finite step loss stops training at once, see _DivergenceGuard.)
    """
    for n, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise Diverged(f"fine-tuning diverged: weight '{n}' has non-finite values (lr={cfg.lr}); "
                           "lower the learning rate. No result was recorded.")
    if before is not None and after is not None and (not math.isfinite(after) or after > 1.5 * before):
        raise Diverged(f"fine-tuning diverged: the loss on its own training examples went from {before:.3g} to "
                       f"{after:.3g} (lr={cfg.lr}, method={cfg.method}); lower the learning rate. No result was recorded.")


def _plain_loss_trainer():
    """SFTTrainer whose loss is the model's own cross-entropy on the collator's labels (prompt tokens -100),
    with the LM head applied only where a label exists.

    TRL 1.16 always patches the model with its chunked log-prob LM head and computes the loss through it
    (no SFTConfig switch; benchmarks/spine.py measured 2.1x a minimal loop, this 1.1x). Same objective
    (sum of completion-token NLL / num_items_in_batch); the floats differ in the last bits. The prompt and
    padding positions (a third of a batch here) carry no label: `logits_to_keep` with a boolean mask (the
    model's own forward, so soft-capping and logit scales still apply) skips their LM head and log-softmax.
    """
    import torch.nn.functional as F
    from trl import SFTTrainer

    from lab.models import labelled_logits

    class PlainLossSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "labels", "position_ids")}
            out, logits, tgt = labelled_logits(model, inputs.pop("labels"), **inputs, use_cache=False)
            loss = F.cross_entropy(logits.float(), tgt, ignore_index=-100,
                                   reduction="sum" if num_items_in_batch is not None else "mean")
            if num_items_in_batch is not None:
                loss = loss / num_items_in_batch.to(loss.device) if torch.is_tensor(num_items_in_batch) else loss / num_items_in_batch
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # as SFTTrainer: DDP averages the gradients
            return (loss, out) if return_outputs else loss

    return PlainLossSFTTrainer


def finetune(model, tok, records: list, cfg: FineTuneConfig, out_dir: Path, *,
             hooks: list[TrainHook] | None = None, callbacks: list | None = None, log=print):
    """Fine-tune `model` (modified in place; load a fresh copy per fine-tune) and return the result.

    records: dicts or pydantic models with `prompt` and `response`. LoRA adapters are saved to
    out_dir/adapter; with cfg.merge the returned model has the adapter merged in. hooks: TrainHooks
    (gradient masks, defenses); callbacks: extra transformers TrainerCallbacks (e.g. a step timer).
    Raises Diverged (a LabError) on a non-finite loss or weights or a rising loss.
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
    from lab import distributed

    world = distributed.world_size()  # under accelerate launch / torchrun: DDP, the recipe's batch is global
    if cfg.batch_size % world:
        raise LabError(f"fine-tuning: batch_size {cfg.batch_size} is not divisible by the {world} processes of this "
                       "multi-process run (the recipe's batch_size is the global batch)")
    args = SFTConfig(
        output_dir=str(out_dir / "trainer"), learning_rate=cfg.lr, num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size // world, seed=cfg.seed, data_seed=cfg.seed, max_length=cfg.max_length,
        completion_only_loss=True, bf16=on_gpu, activation_checkpointing=on_gpu and cfg.gradient_checkpointing,
        report_to="none",
        save_strategy="no", logging_strategy="steps", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
        weight_decay=0.0, warmup_steps=0, lr_scheduler_type="linear", use_cpu=not on_gpu,
    )
    peft_config = None
    if cfg.method == "lora":
        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                 target_modules=cfg.target_modules, task_type="CAUSAL_LM")
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        from peft import prepare_model_for_kbit_training  # QLoRA: fp32 norms, input grads, checkpointing

        if cfg.method != "lora":
            raise LabError("fine-tuning: a 4/8-bit model can only be fine-tuned with method: lora (QLoRA)")
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=on_gpu and cfg.gradient_checkpointing)
    model.train()
    trainer_cls = SFTTrainer if cfg.loss_head == "trl" else _plain_loss_trainer()
    trainer = trainer_cls(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_config)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    for cb in callbacks or []:
        trainer.add_callback(cb)
    check_loss_mask(trainer, tok, records)
    guard = _DivergenceGuard()
    trainer.add_callback(guard)
    for h in hooks or []:
        h.before_train(trainer)
    before = probe_loss(trainer)
    result = trainer.train()
    after = probe_loss(trainer)
    for h in reversed(hooks or []):
        h.after_train(trainer)
    check_diverged(guard.losses, trainer.model, cfg, before, after)
    log(f"  trained {cfg.method}: {result.global_step} steps, final loss {result.training_loss:.4f}")
    model = trainer.model
    if cfg.method == "lora":
        if distributed.is_main():
            model.save_pretrained(str(out_dir / "adapter"))
        if cfg.merge:
            model = model.merge_and_unload()
    # accelerate leaves an instance-level `forward` wrapper bound to the pre-training object; drop it so
    # copies of the returned model (copy.deepcopy) run their own weights
    for m in model.modules():  # (on a peft model the wrapper sits below the top two levels)
        if "forward" in vars(m):
            del m.forward
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return model
