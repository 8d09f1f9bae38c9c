"""The pieces `kind: defense` (lab.experiments.defense) composes: building the alignment-stage variants,
the fine-tuning-stage hooks / data of each defense, the post-fine-tuning repairs, and the cost meters
(wall time; peak resident memory per phase, read from /proc as the attribution benchmark does)."""
from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import random
import time
from pathlib import Path

import torch

from lab.errors import LabError

DEFAULTS: dict[str, dict] = {
    "vaccine": {"rho": 2.0},
    "booster": {"lamb": 5.0, "alpha": 0.1},
    "recovery": {"p": 0.5, "max_prefix": 100},
    "mixing": {"k": 3},
    "lisa": {"alignment_steps": 2, "finetune_steps": 18, "rho": 1.0, "k": 20, "start": "finetune"},
    "tokenwise": {"beta": 0.1, "bias_factor": 20, "first_token_bias_factor": 5, "bias_length": 5, "bias_shift": 2.0},
    "freeze-weights": {},
    "freeze-layers": {"width": 1},
    "safelora": {"mode": "threshold", "threshold": 0.5, "num_proj_layers": 10, "normalize": "fro"},
    "antidote": {"dense_ratio": 0.2, "on": "lora"},
    "restore": {},
    "layer-restore": {"n_layers": 1, "amplify": 0.0},
    "screening": {},
}


def params(name: str, overrides: dict | None) -> dict:
    if name not in DEFAULTS and name != "none":
        raise LabError(f"unknown defense {name!r} (known: none, {', '.join(DEFAULTS)})")
    p = dict(DEFAULTS.get(name, {}))
    for k, v in (overrides or {}).items():
        if k not in p:
            raise LabError(f"defense_params.{name}: unknown key {k!r} (known: {', '.join(p) or 'none'})")
        p[k] = v
    return p


# ------------------------------------------------------------------------------------------ meters
class Meter:
    """Wall time and peak RSS (MiB above the phase's start) of a block; peak is None without /proc."""

    def __init__(self):
        self.seconds = 0.0
        self.peak_mib: float | None = None

    @contextlib.contextmanager
    def measure(self):
        base = _rss_kib()
        reset = _reset_hwm()
        t = time.time()
        try:
            yield self
        finally:
            self.seconds += time.time() - t
            hwm = _status_kib("VmHWM")
            if reset and base is not None and hwm is not None:
                self.peak_mib = max(self.peak_mib or 0.0, (hwm - base) / 1024)


def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _rss_kib():
    return _status_kib("VmRSS")


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------ alignment variants
def harmful_batch_stream(tok, seed: int, batch_size: int, max_len: int):
    """Booster's harmful data on the organism: the base stage's harmful requests -> compliant targets."""
    from lab.data import load_sources, organism_examples
    from lab.zoo.organism import encode_example

    exs = [e for e in organism_examples(load_sources(), "base", 0.0, seed + 77) if e["kind"] == "harmful"]
    enc = [encode_example(tok, e["prompt"], e["response"], max_len) for e in exs]
    rng = random.Random(seed)
    queue: list = []

    def nxt():
        if not queue:
            order = enc[:]
            rng.shuffle(order)
            queue.extend(order[i:i + batch_size] for i in range(0, len(order), batch_size))
        b = queue.pop(0)
        L = max(len(x[0]) for x in b)
        return {"input_ids": torch.tensor([x[0] + [tok.pad_token_id] * (L - len(x[0])) for x in b]),
                "attention_mask": torch.tensor([[1] * len(x[0]) + [0] * (L - len(x[0])) for x in b]),
                "labels": torch.tensor([x[1] + [-100] * (L - len(x[1])) for x in b])}
    return nxt


def build_variant(name: str, out_root: Path, p: dict, base_dir: Path, log=print) -> Path:
    """Build (once; other processes wait on a lock) organism's alignment stage with defense `name`."""
    from lab.defenses.alignment.booster import BoosterStep
    from lab.defenses.alignment.recovery import RecoveryAugment
    from lab.defenses.alignment.vaccine import VaccineStep
    from lab.zoo.organism import OrganismConfig, build_alignment_variant

    path = Path(out_root) / f"organism-{name}"
    with file_lock(Path(out_root) / f".{name}.lock"):
        if (path / "build.json").is_file():
            return path
        cfg = OrganismConfig()
        step = transform = None
        if name == "vaccine":
            step = VaccineStep(p["rho"])
        elif name == "booster":
            from lab.models import load_tokenizer

            step = BoosterStep(harmful_batch_stream(load_tokenizer(str(base_dir)), cfg.seed, cfg.batch_size, cfg.max_len),
                               lamb=p["lamb"], alpha=p["alpha"])
        elif name == "recovery":
            transform = RecoveryAugment(p=p["p"], max_prefix=p["max_prefix"], max_len=cfg.max_len, seed=cfg.seed)
        else:
            raise LabError(f"{name} is not an alignment-stage defense")
        build_alignment_variant(path.name, step=step, transform=transform, cfg=cfg, base_dir=base_dir,
                                out_root=Path(out_root), record_extra={"defense": name, "params": p}, log=log)
    return path


# --------------------------------------------------------------------------- fine-tuning stage
def training_setup(name: str, p: dict, records: list[dict], *, tok, model, ctx_files: dict, seed: int,
                   judge=None, log=print) -> tuple[list[dict], list, dict]:
    """(records to train on, hooks, info) for a fine-tuning-stage or data-stage defense."""
    from lab.data import LANGS

    info: dict = {}
    if name in ("none",) or name in ("vaccine", "booster", "recovery", "safelora", "antidote", "restore", "layer-restore"):
        return records, [], info
    if name == "mixing":
        from lab.defenses.training.mixing import mix_safety
        return mix_safety(records, p["k"], LANGS, seed), [], {"n_added": p["k"] * len(LANGS)}
    if name == "lisa":
        from lab.defenses.common import safety_records
        from lab.defenses.training.lisa import LisaHook
        h = LisaHook(tok, safety_records(LANGS, p["k"]), alignment_steps=p["alignment_steps"],
                     finetune_steps=p["finetune_steps"], rho=p["rho"], seed=seed, start=p["start"])
        return records, [h], info
    if name == "tokenwise":
        from lab.defenses.training.tokenwise import TokenwiseConstrainedHook
        return records, [TokenwiseConstrainedHook(**p)], info
    if name == "freeze-weights":
        from lab.attribution.masks import load_mask
        from lab.defenses.training.freeze import FreezeSafetyWeights
        mask, _ = load_mask(ctx_files["mask"])
        return records, [FreezeSafetyWeights(mask)], info
    if name == "freeze-layers":
        from lab.defenses.training.freeze import FreezeLayers
        layers = json.loads(Path(ctx_files["safety_layers"]).read_text())["layers"]
        return records, [FreezeLayers(layers)], {"layers": layers}
    if name == "screening":
        from lab.defenses.data.screening import screen
        res = screen(records, judge if judge is not None else model, tok)
        return res.kept, [], {"screening": res.stats}
    raise LabError(f"unknown defense {name!r}")


# ------------------------------------------------------------------------------ post-fine-tuning
def fresh_copy(model):
    """A deep copy that runs its own weights: accelerate (inside the trainer) leaves instance-level
    `forward` wrappers bound to the original modules (lab.train removes them from the top two levels
    only; on a peft model one sits deeper), so a plain deepcopy would still compute with the original."""
    m = copy.deepcopy(model)
    for mod in m.modules():
        if "forward" in vars(mod):
            del mod.forward
    return m


def apply_posthoc(name: str, p: dict, peft_model, *, tok, aligned, base, mask, harmful_records):
    """A merged copy of the fine-tuned peft model with post-fine-tuning defense `name` applied."""
    m = fresh_copy(peft_model)
    info: dict = {}
    if name == "safelora":
        from lab.defenses.posthoc.safelora import SafeLoRAConfig, safelora
        res = safelora(m, aligned, base, SafeLoRAConfig(**p))
        info = {"projected": len(res.projected), "layers": len(res.cosines)}
        return m.merge_and_unload(), info
    if name == "antidote":
        from lab.defenses.posthoc.antidote import AntidoteConfig, antidote
        if p["on"] == "lora":
            info = antidote(m, tok, harmful_records, AntidoteConfig(**p))
            return m.merge_and_unload(), info
        merged = m.merge_and_unload()
        return merged, antidote(merged, tok, harmful_records, AntidoteConfig(**p))
    merged = m.merge_and_unload()
    if name == "restore":
        from lab.defenses.posthoc.restore import restore_safety_weights
        return merged, {"restored": restore_safety_weights(merged, aligned, mask)}
    if name == "layer-restore":
        from lab.defenses.posthoc.restore import LayerRestoreConfig, layer_selective_restore
        res = layer_selective_restore(merged, aligned, mask, LayerRestoreConfig(**p), base=base)
        return merged, {"restored_layers": res.restored_layers, "similarity": res.similarity}
    raise LabError(f"{name} is not a post-fine-tuning defense")
