"""Interventions on masked weights: prune (zero), restore from another model, and gradient masks.

Gradient masks (`attach_grad_mask`) come in two modes:

  "only":   only masked entries may change (seed 004's "changing only X % of the weights").
            Parameters that the mask does not cover (norms, embeddings, lm_head) are frozen whole.
  "freeze": masked entries may not change; everything else trains (the "freeze the safety weights"
            defense).

Full fine-tuning: a tensor hook zeroes the gradient of every fixed entry, so the optimizer sees 0.
With SGD (any momentum) or Adam/AdamW with weight_decay=0 the fixed entries then stay bit-exact (Adam's
moments of an entry whose gradient was always 0 are 0 and its update is exactly 0). Decoupled weight
decay (AdamW weight_decay>0) would still shrink them, so the handle also snapshots the fixed entries
and `handle.enforce()` writes them back; call it after every optimizer.step() and it is exact for any
optimizer.

LoRA (peft): the base weights are frozen anyway; what must be constrained is the low-rank delta
ΔW = B·A·scaling, which is dense and cannot be sparsified within rank r. Our choice — the masked
forward: while training, a forward hook on each LoRA layer subtracts x·(ΔW ⊙ D)ᵀ, where D is the set
of entries that must not change (D = mask for "freeze", ¬mask for "only"), so the trained function is
exactly W + ΔW ⊙ ¬D and the gradients of A and B only see the allowed entries. At merge time the
delta on D is dropped: the layer's `get_delta_weight` is patched to return ΔW ⊙ ¬D, so a plain peft
`merge_and_unload()` writes W + 0 (bit-exact W) on D; `handle.enforce(merged_model)` additionally
restores D from the snapshot. The merged model is thus exactly the model that was trained (not a
post-hoc projection of an unconstrained adapter, which the attack never had to work around). It
needs lora_dropout == 0 (the hook cannot replay peft's dropout mask) and plain LoRA (no DoRA).
Cost: one dense (out x in) delta per LoRA layer per forward — fine for the organism and for 7-8 B
layer sizes on a GPU.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from lab.errors import LabError

Mask = Mapping[str, torch.Tensor]


def canonical_name(name: str) -> str:
    """Parameter name with peft wrapping removed ('base_model.model.' prefix, '.base_layer')."""
    if name.startswith("base_model.model."):
        name = name[len("base_model.model."):]
    return name.replace(".base_layer.", ".")


def _param_map(model: nn.Module) -> dict[str, nn.Parameter]:
    out = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        if "lora_" in n:
            continue
        out.setdefault(canonical_name(n), p)
    return out


def _resolve(model: nn.Module, mask: Mask) -> dict[str, tuple[nn.Parameter, torch.Tensor]]:
    params = _param_map(model)
    res = {}
    for name, m in mask.items():
        p = params.get(canonical_name(name))
        if p is None:
            raise LabError(f"mask names parameter {name!r}, which the model does not have")
        if p.shape != m.shape:
            raise LabError(f"mask for {name} has shape {tuple(m.shape)}, parameter has {tuple(p.shape)}")
        res[name] = (p, m.to(device=p.device, dtype=torch.bool))
    return res


@torch.no_grad()
def prune(model: nn.Module, mask: Mask) -> int:
    """Set the masked weights to zero, in place. Returns the number of zeroed entries."""
    n = 0
    for _, (p, m) in _resolve(model, mask).items():
        p.masked_fill_(m, 0)
        n += int(m.sum().item())
    return n


@torch.no_grad()
def restore(model: nn.Module, source: nn.Module | Mapping[str, torch.Tensor], mask: Mask) -> int:
    """Copy the masked weights from `source` (a model of the same architecture, or a state dict)."""
    src = _param_map(source) if isinstance(source, nn.Module) else {canonical_name(k): v for k, v in source.items()}
    n = 0
    for name, (p, m) in _resolve(model, mask).items():
        s = src.get(canonical_name(name))
        if s is None:
            raise LabError(f"restore source has no parameter {name!r}")
        if s.shape != p.shape:
            raise LabError(f"restore source {name} has shape {tuple(s.shape)}, model has {tuple(p.shape)}")
        p.copy_(torch.where(m, s.to(device=p.device, dtype=p.dtype), p))
        n += int(m.sum().item())
    return n


# ------------------------------------------------------------------------------ gradient masks


def _lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """canonical base-weight name -> peft LoRA layer (modules with base_layer, lora_A, lora_B)."""
    out = {}
    for n, mod in model.named_modules():
        if hasattr(mod, "base_layer") and hasattr(mod, "lora_A") and hasattr(mod, "lora_B"):
            out[canonical_name(n + ".base_layer.weight")] = mod
    return out


def _lora_delta(mod: nn.Module) -> torch.Tensor | None:
    delta = None
    for a in getattr(mod, "active_adapters", []) or []:
        if a not in mod.lora_A:
            continue
        if getattr(mod, "use_dora", {}).get(a, False):
            raise LabError("masked LoRA does not support DoRA adapters")
        drop = mod.lora_dropout[a] if a in mod.lora_dropout else None
        if isinstance(drop, nn.Dropout) and drop.p > 0 and mod.training:
            raise LabError("masked LoRA needs lora_dropout=0 (the mask hook cannot replay the dropout mask)")
        d = mod.lora_B[a].weight @ mod.lora_A[a].weight * mod.scaling[a]
        if getattr(mod, "fan_in_fan_out", False):
            d = d.T
        delta = d if delta is None else delta + d
    return delta


def _mask_lora_layer(mod: nn.Module, fixed: torch.Tensor):
    """Masked forward for one peft LoRA layer: output -= x·(ΔW ⊙ fixed)ᵀ. Also makes the layer's
    `get_delta_weight` return ΔW ⊙ ¬fixed, so a plain peft merge_and_unload() adds nothing to the fixed
    entries (W + 0 is bit-exact W). The returned handle removes the forward hook only; the merge patch
    stays until the LoRA layer is unloaded (the delta a merge writes must be the one that was trained)."""
    fixed = fixed.to(mod.base_layer.weight.device)
    if getattr(mod, "lora_variant", None):
        if any(a in mod.lora_variant for a in getattr(mod, "active_adapters", [])):
            raise LabError("masked LoRA supports plain LoRA only (no DoRA or other variants)")
    orig_get_delta = mod.get_delta_weight

    def masked_delta(adapter, orig_get_delta=orig_get_delta):
        d = orig_get_delta(adapter)
        return d.masked_fill(fixed.to(d.device), 0)
    if not getattr(mod, "_lab_masked_delta", False):
        mod.get_delta_weight = masked_delta
        mod._lab_masked_delta = True

    def hook(module, args, out):
        if getattr(module, "merged", False) or getattr(module, "disable_adapters", False):
            return out
        delta = _lora_delta(module)
        if delta is None:
            return out
        x = args[0]
        return out - F.linear(x.to(delta.dtype), delta * fixed.to(delta.dtype)).to(out.dtype)
    return mod.register_forward_hook(hook)


class GradMaskHandle:
    """Returned by `attach_grad_mask`; call `enforce()` after each optimizer step (and after a LoRA
    merge, with the merged model), and `remove()` when done."""

    def __init__(self, model: nn.Module, mask: Mask, mode: str, exact: bool = True):
        if mode not in ("only", "freeze"):
            raise LabError(f"grad_mask_mode must be 'only' or 'freeze', got {mode!r}")
        self.mode = mode
        self.handles: list = []
        self.requires_grad: dict[int, tuple[nn.Parameter, bool]] = {}
        self.snapshot: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (fixed mask, values)
        resolved = _resolve(model, mask)
        lora = _lora_layers(model)
        covered = {id(p) for p, _ in resolved.values()}
        if mode == "only":
            for n, p in _param_map(model).items():
                if id(p) not in covered and p.requires_grad:
                    self.requires_grad[id(p)] = (p, True)
                    p.requires_grad_(False)
        fixed_of: dict[str, torch.Tensor] = {}
        for name, (p, m) in resolved.items():
            fixed = m if mode == "freeze" else ~m
            fixed_of[canonical_name(name)] = fixed
            if exact:
                self.snapshot[canonical_name(name)] = (fixed, p.detach()[fixed].clone())
            if p.requires_grad:
                self.handles.append(p.register_hook(lambda g, fixed=fixed: g.masked_fill(fixed, 0)))
        for name, mod in lora.items():
            fixed = fixed_of.get(name)
            if fixed is None:
                if mode == "freeze":
                    continue
                fixed = torch.ones_like(mod.base_layer.weight, dtype=torch.bool)
                if exact:
                    self.snapshot[name] = (fixed, mod.base_layer.weight.detach()[fixed].clone())
            self.handles.append(_mask_lora_layer(mod, fixed))

    @torch.no_grad()
    def enforce(self, model: nn.Module | None = None) -> None:
        """Write the snapshot back into every fixed entry (exact for any optimizer; after a LoRA merge
        pass the merged model). No-op when attached with exact=False."""
        if model is None:
            if not hasattr(self, "_model_params"):
                return
            params = self._model_params
        else:
            params = _param_map(model)
        for name, (fixed, vals) in self.snapshot.items():
            p = params.get(name)
            if p is None:
                raise LabError(f"enforce: model has no parameter {name!r}")
            p[fixed.to(p.device)] = vals.to(device=p.device, dtype=p.dtype)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        for p, rg in self.requires_grad.values():
            p.requires_grad_(rg)
        self.requires_grad = {}


def attach_grad_mask(model: nn.Module, mask: Mask, mode: str = "only", *, exact: bool = True) -> GradMaskHandle:
    """Restrict training to masked entries ("only") or freeze them ("freeze"); works for full
    fine-tuning and for peft LoRA models (see the module docstring). Attach before building the
    optimizer; call handle.enforce() after optimizer.step()."""
    h = GradMaskHandle(model, mask, mode, exact)
    h._model_params = _param_map(model)
    return h


def merge_masked_lora(peft_model: nn.Module, handle: GradMaskHandle) -> nn.Module:
    """Merge LoRA adapters and drop the delta on fixed entries; returns the plain base model."""
    handle.remove()
    merged = peft_model.merge_and_unload()
    handle.enforce(merged)
    return merged


class GradMaskHook:
    """`attach_grad_mask` as a lab.train hook: `finetune(..., hooks=[GradMaskHook(mask, "only")])`.

    before_train(trainer): attaches the mask to trainer.model (before the optimizer is built, so "only"
    leaves uncovered parameters out of it). Full fine-tuning snapshots the fixed entries and a
    TrainerCallback writes them back after every optimizer step (exact for any optimizer, weight decay
    included); LoRA (a peft model) gets the masked forward and masked merge, no snapshot (its base
    weights are frozen and the merge writes W + 0 on fixed entries). after_train(trainer): removes the
    gradient hooks and restores requires_grad; the LoRA merge patch stays, so a plain
    `merge_and_unload()` afterwards is exact. `full=None` detects LoRA from the model."""

    def __init__(self, mask: Mask, mode: str = "only", *, full: bool | None = None):
        if mode not in ("only", "freeze"):
            raise LabError(f"grad_mask_mode must be 'only' or 'freeze', got {mode!r}")
        self.mask, self.mode, self.full = mask, mode, full
        self.handle: GradMaskHandle | None = None

    def before_train(self, trainer) -> None:
        from transformers import TrainerCallback

        model = trainer.model
        full = self.full if self.full is not None else not _lora_layers(model)
        self.handle = handle = attach_grad_mask(model, self.mask, self.mode, exact=full)
        if full:
            class EnforceMask(TrainerCallback):  # fixed entries written back after every optimizer step
                def on_step_end(self, args, state, control, **kw):
                    handle.enforce()
            trainer.add_callback(EnforceMask())

    def after_train(self, trainer) -> None:
        if self.handle is not None:
            self.handle.enforce()
            self.handle.remove()
            self.handle = None
