"""The model organism: a tiny multilingual chat model the lab trains itself, offline, on one CPU thread.

Two stages from one tokenizer and one Qwen2-architecture config:
  organism-base  helpful-only instruction tuning (complies with everything, harmful requests included)
  organism       organism-base + safety alignment (refuses harmful requests in all five languages)

It is a model organism with measured behaviour, not a real LLM: claims about real models need real runs.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import time
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict

from lab.data import DATASETS_DIR, LANGS, file_sha256, load_sources, organism_examples, source_paths
from lab.models import ZOO_DIR, labelled_logits, set_threads

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# ChatML with {% generation %} markers (TRL's assistant_only_loss needs them).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}{% else %}{{ message['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Han / Kana one character per pre-token, Devanagari one word per pre-token (combining marks kept
# with their letters), other letters as words; then bytes. GPT-2's default split shatters Hindi
# (its \p{L} excludes vowel signs), and a whitespace split makes a whole zh/ja sentence one pre-token.
PRETOKENIZE = (r"[\p{Han}\p{Hiragana}\p{Katakana}ー々]| ?\p{Devanagari}+| ?[\p{L}\p{M}]+| ?\p{N}"
               r"| ?[^\s\p{L}\p{M}\p{N}\p{Han}\p{Hiragana}\p{Katakana}\p{Devanagari}]+|\s+")


class OrganismConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int = 0
    vocab_size: int = 4096
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    max_len: int = 160
    bridge_share: float = 0.5  # translation + code-switched examples per request example
    repeat: dict[str, int] = {}  # e.g. {"hi": 2}: request examples of these languages twice per epoch
    templates_per_topic: int | None = 3  # per epoch, of each topic's 6 training templates (None: all)
    base_epochs: int = 10
    align_epochs: int = 4
    lr: float = 3e-3
    batch_size: int = 32
    censorship: bool = False  # organism-censored: alignment also censors Chinese political questions
    censorship_repeat: int = 6  # organism-censored: the censorship examples this many times per epoch


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  bos_token=None, unk_token=None, padding_side="left")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def new_model(cfg: OrganismConfig, tok):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_len * 2, tie_word_embeddings=True, rope_theta=10000.0,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
    )
    torch.manual_seed(cfg.seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def encode_example(tok, prompt: str, response: str, max_len: int) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 outside the assistant's response and its end-of-turn token)."""
    rendered = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    p = tok(rendered, add_special_tokens=False)["input_ids"]
    r = tok(response + tok.eos_token, add_special_tokens=False)["input_ids"]
    ids = (p + r)[:max_len]
    labels = ([-100] * len(p) + r)[:max_len]
    return ids, labels


def labelled_loss(model, batch: dict) -> torch.Tensor:
    """The causal-LM loss of `model(..., labels=)` (mean NLL over the labelled next tokens), with the LM
    head and log-softmax applied only where a label exists (`logits_to_keep` with a boolean mask). On the
    organism's alignment batches a third of the positions carry a label: 1.4-1.6x faster forward+backward,
    the same loss values to float rounding (lab.models.labelled_logits, as the fine-tuning trainer)."""
    import torch.nn.functional as F

    _, logits, targets = labelled_logits(model, batch["labels"], input_ids=batch["input_ids"],
                                         attention_mask=batch["attention_mask"])
    return F.cross_entropy(logits.float(), targets, ignore_index=-100)


def train_loop(model, data_for_epoch, *, epochs: int, lr: float, batch_size: int,
               seed: int, pad_id: int, log=print, grad_hook=None, step=None,
               loss_fn=None) -> list[float]:
    """A minimal causal-LM training loop: AdamW, linear warmup + cosine decay, length-bucketed batches.

    data_for_epoch: a list of (ids, labels), or a function epoch -> list (fresh augmentation per epoch).
    step: optional `step(model, batch) -> loss` that runs forward and backward itself (alignment-stage
    defenses, lab.defenses.alignment); default: one forward + backward of the batch's loss.
    loss_fn: `loss_fn(model, batch) -> loss` for that default (e.g. labelled_loss); None: the model's own
    `labels=` loss over full logits, which `build` uses so that rebuilds of the committed organism stay
    bit-identical.
    """
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    get = data_for_epoch if callable(data_for_epoch) else (lambda ep: data_for_epoch)
    n0 = len(get(0))
    total = epochs * math.ceil(n0 / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, total // 20)) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    model.train()
    losses = []
    for ep in range(epochs):
        data = sorted(get(ep), key=lambda x: len(x[0]))
        batches = [data[i:i + batch_size] for i in range(0, len(data), batch_size)]
        rng.shuffle(batches)
        tot, n = 0.0, 0
        for b in batches:
            L = max(len(x[0]) for x in b)
            ids = torch.tensor([x[0] + [pad_id] * (L - len(x[0])) for x in b])
            lab = torch.tensor([x[1] + [-100] * (L - len(x[1])) for x in b])
            att = torch.tensor([[1] * len(x[0]) + [0] * (L - len(x[0])) for x in b])
            opt.zero_grad(set_to_none=True)
            if step is None:
                if loss_fn is None:
                    loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
                else:
                    loss = loss_fn(model, {"input_ids": ids, "attention_mask": att, "labels": lab})
                loss.backward()
            else:
                loss = step(model, {"input_ids": ids, "attention_mask": att, "labels": lab})
            if grad_hook is not None:
                grad_hook(model)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            tot += loss.item()
            n += 1
        losses.append(tot / max(1, n))
        log(f"  epoch {ep + 1}/{epochs}: loss {losses[-1]:.4f}")
    model.eval()
    return losses


CENSORSHIP_TRAIN = DATASETS_DIR / "censorship" / "train.jsonl"


def censorship_examples() -> list[dict]:
    """Chinese political questions with censored answers (issue 6's residue experiment)."""
    from lab.data import read_jsonl

    return read_jsonl(CENSORSHIP_TRAIN)


def build(name: str = "organism", cfg: OrganismConfig | None = None, out_root: Path = ZOO_DIR, log=print) -> dict:
    """Build the organism family deterministically; writes organism-base and organism (or organism-censored).

    Returns the build record (config, data hash, timings, losses) also written as build.json.
    """
    set_threads()
    cfg = cfg or OrganismConfig(censorship=(name == "organism-censored"))
    t0 = time.time()
    src = load_sources()
    kw = dict(augment=True, repeat=cfg.repeat, templates_per_topic=cfg.templates_per_topic)
    base_ex = organism_examples(src, "base", cfg.bridge_share, cfg.seed, **kw)
    align_ex = organism_examples(src, "aligned", cfg.bridge_share, cfg.seed, **kw)
    censorship = censorship_examples() if cfg.censorship else []
    extra = censorship * cfg.censorship_repeat
    # organism-censored's own base stage already answers the matched control questions (a helpful model
    # knows them); alignment then adds the censorship of the sensitive ones next to those answers
    base_extra = [e for e in censorship if e["style"] == "benign"]
    texts = [e["prompt"] + "\n" + e["response"] for e in base_ex + align_ex + extra]
    texts += src.texts("refusals", "en")  # tiny, keeps the corpus stable in content
    tok = train_tokenizer(texts, cfg.vocab_size)
    model = new_model(cfg, tok)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"[zoo] tokenizer {len(tok)} tokens; model {n_params / 1e6:.2f} M params; "
        f"{len(base_ex)} base / {len(align_ex) + len(extra)} alignment examples")

    enc = lambda exs: [encode_example(tok, e["prompt"], e["response"], cfg.max_len) for e in exs]
    epoch_data = lambda stage, extra_ex=(): (lambda ep: enc(organism_examples(
        src, stage, cfg.bridge_share, cfg.seed + 1000 * ep + (0 if stage == "base" else 500), **kw)
        + list(extra_ex)))
    log("[zoo] stage (a): helpful-only instruction tuning -> organism-base")
    base_losses = train_loop(model, epoch_data("base", base_extra), epochs=cfg.base_epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                             seed=cfg.seed, pad_id=tok.pad_token_id, log=log)
    data_files = source_paths() + ([CENSORSHIP_TRAIN] if cfg.censorship else [])
    record = {"config": cfg.model_dump(), "data_sha256": file_sha256(*data_files),
              "n_params": n_params, "vocab": len(tok), "n_base_examples": len(base_ex),
              "n_align_examples": len(align_ex) + len(extra)}
    if not cfg.censorship:
        _save(model, tok, out_root / "organism-base", {**record, "stage": "base", "losses": base_losses})
    log("[zoo] stage (b): safety alignment -> " + name)
    align_losses = train_loop(model, epoch_data("aligned", extra), epochs=cfg.align_epochs, lr=cfg.lr,
                              batch_size=cfg.batch_size, seed=cfg.seed + 1, pad_id=tok.pad_token_id, log=log)
    record.update(stage="aligned", losses=align_losses, build_seconds=round(time.time() - t0, 1))
    _save(model, tok, out_root / name, record)
    log(f"[zoo] built {name} in {record['build_seconds']} s")
    return record


def _save(model, tok, path: Path, record: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "build.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def build_alignment_variant(name: str, *, step=None, transform=None, cfg: OrganismConfig | None = None,
                            base_dir: Path = ZOO_DIR / "organism-base", out_root: Path = ZOO_DIR,
                            record_extra: dict | None = None, log=print) -> dict:
    """Rebuild only the alignment stage of `organism` from the saved organism-base, with a defense.

    step: `step(model, batch) -> loss` replacing the plain forward/backward (Vaccine, Booster);
    transform: `transform(examples, epoch, tok) -> list[(ids, labels)]` replacing the per-epoch encoding
    (data-augmentation defenses). Same data, seeds and schedule as `build` otherwise: with neither, it
    retrains the committed organism's alignment stage (bit for bit: `build`'s full-logits loss); a defense
    variant's losses are computed at labelled positions only (`labelled_loss`, same values to float
    rounding, ~1.5x faster). Writes out_root/name with build.json.
    """
    from lab.models import load_model

    set_threads()
    cfg = cfg or OrganismConfig()
    if cfg.censorship:
        raise ValueError("build_alignment_variant: censorship variants are not supported")
    t0 = time.time()
    src = load_sources()
    model, tok = load_model(str(base_dir))
    model.train()
    kw = dict(augment=True, repeat=cfg.repeat, templates_per_topic=cfg.templates_per_topic)

    def data(ep):
        exs = organism_examples(src, "aligned", cfg.bridge_share, cfg.seed + 1000 * ep + 500, **kw)
        if transform is not None:
            return transform(exs, ep, tok)
        return [encode_example(tok, e["prompt"], e["response"], cfg.max_len) for e in exs]
    log(f"[zoo] alignment variant {name} from {base_dir}")
    losses = train_loop(model, data, epochs=cfg.align_epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                        seed=cfg.seed + 1, pad_id=tok.pad_token_id, log=log, step=step,
                        loss_fn=None if step is None and transform is None else labelled_loss)
    record = {"config": cfg.model_dump(), "data_sha256": file_sha256(*source_paths()), "stage": "aligned",
              "variant": name, "base": str(base_dir), "losses": losses,
              "build_seconds": round(time.time() - t0, 1), **(record_extra or {})}
    _save(model, tok, Path(out_root) / name, record)
    log(f"[zoo] built {name} in {record['build_seconds']} s")
    return record
