"""Lisa (Huang et al., NeurIPS 2024, "Lisa: Lazy Safety Alignment for Large Language Models against
Harmful Fine-tuning Attack"; code github:git-disl/Lisa, trainer.py LisaTrainer).

Fine-tuning-stage, bi-state optimization: the trainer alternates `alignment_steps` steps on alignment
data (harmful prompt → refusal) with `finetune_steps` steps on the user's data. The total number of
steps is the user's (an alignment step replaces that step's user batch, as in the official
check_mode). After the first 10 % of all steps a proximal term keeps each state near the other's last
weights:
    alignment state: loss + ρ/2 · Σ ‖w − w_ft‖²    w_ft = weights when the last user phase ended
    user state:      loss + ρ/2 · Σ ‖w − w_al‖²    w_al = weights when the last alignment phase ended
(sums over trainable parameters — the LoRA factors under LoRA). Official defaults in
script/finetune/lisa_poison_ratio.sh: ρ = 1, 100 alignment / 900 user steps of ~20,000; our fine-tunes
have ~30–100 steps, so we keep the 1 : 9 ratio at 2 / 18 steps. The official code starts in the
alignment state (`start="alignment"`); our default starts in the user state: lab.train's divergence
guard compares the first and last steps' losses, and alignment-first makes the first losses those of
the refusal data (low on an aligned model), so a normal run was flagged as diverging. The phase
pattern is otherwise the official one. Alignment data: the lab's refusal data, `k` per language, all
five languages.
"""
from __future__ import annotations

import torch

from lab.defenses.common import SideBatches
from lab.errors import LabError
from lab.train import TrainHook


class LisaHook(TrainHook):
    def __init__(self, tok, alignment_records: list[dict], *, alignment_steps: int = 2, finetune_steps: int = 18,
                 rho: float = 1.0, warmup_fraction: float = 0.1, seed: int = 0, start: str = "finetune"):
        if alignment_steps < 0 or finetune_steps < 1:
            raise LabError(f"Lisa: alignment_steps must be >= 0 and finetune_steps >= 1, got {alignment_steps}, {finetune_steps}")
        self.tok, self.recs = tok, alignment_records
        self.a_steps, self.f_steps, self.rho, self.warm = alignment_steps, finetune_steps, rho, warmup_fraction
        self.seed = seed
        if start not in ("alignment", "finetune"):
            raise LabError(f"Lisa: start must be 'alignment' or 'finetune', got {start!r}")
        self.start = start
        self.trace: list[str] = []        # the state of every step ("alignment" | "finetune")
        self.prox: list[float] = []       # the proximal term of every step (0 before warm-up ends)

    def before_train(self, trainer) -> None:
        model = trainer.model
        self.side = SideBatches(self.tok, self.recs, trainer.args.per_device_train_batch_size, seed=self.seed,
                                max_length=trainer.args.max_length or 256)
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.w_al = {n: p.detach().clone() for n, p in self.params.items()}
        self.w_ft = {n: p.detach().clone() for n, p in self.params.items()}
        self.status = self.start if self.a_steps > 0 else "finetune"
        self.clock = self.steps = 0
        self.total = len(trainer.get_train_dataloader()) * trainer.args.num_train_epochs
        self.orig = trainer.compute_loss
        trainer.compute_loss = self.compute_loss

    def _snapshot(self, into: dict) -> None:
        for n, p in self.params.items():
            into[n] = p.detach().clone()

    def _check_mode(self, inputs, device):
        if self.status == "alignment":
            if self.clock % self.a_steps == 0 and self.steps != 0:
                self.status, self.clock = "finetune", 0
                self._snapshot(self.w_al)          # official switch_model: anchor for the user phase
                return inputs
            return self.side.next(device)
        if self.clock % self.f_steps == 0 and self.steps != 0 and self.a_steps != 0:
            self.status, self.clock = "alignment", 0
            self._snapshot(self.w_ft)
            return self.side.next(device)
        return inputs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        dev = inputs["input_ids"].device
        new = self._check_mode(inputs, dev)
        if new is not inputs:
            num_items_in_batch = None
        loss = self.orig(model, new, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        out = None
        if return_outputs:
            loss, out = loss
        prox = torch.zeros((), device=dev)
        if self.rho > 0 and self.steps > self.warm * self.total:
            anchor = self.w_ft if self.status == "alignment" else self.w_al
            for n, p in self.params.items():
                prox = prox + torch.sum((p - anchor[n]) ** 2)
            prox = self.rho / 2 * prox
        self.trace.append(self.status)
        self.prox.append(float(prox.detach()))
        self.steps += 1
        self.clock += 1
        loss = loss + prox
        return (loss, out) if return_outputs else loss

    def after_train(self, trainer) -> None:
        trainer.compute_loss = self.orig
