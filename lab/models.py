"""Load any causal LM + tokenizer by hub id, local path, GGUF file or zoo name (`zoo:organism`,
`zoo:smollm2-135m-instruct`).

Resolution never guesses: a zoo name must exist, a path-looking string (starts with `.`, `/` or
`~`, has more than one `/`, ends with `/`) must be a local model folder, a `*.gguf` path is
converted once into a cached safetensors folder (lab.zoo.real), and a hub id (`org/name`) is taken
from the local Hugging Face cache. A hub id that is not cached fails in seconds with a message that
says so: immediately under HF_HUB_OFFLINE=1, else after one short probe of the hub (transformers'
own download path retries for over a minute when the network is unreachable).

Loading: safetensors only, trust_remote_code off unless asked, fp32 on CPU, bf16 on GPU (fp16 where
the GPU has no bf16), optional QLoRA-style 4-/8-bit loading through bitsandbytes (CUDA only).
"""
from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path

import torch

from lab.errors import LabError

ZOO_DIR = Path(__file__).resolve().parent / "zoo" / "checkpoints"
HUB_PROBE_TIMEOUT_S = 5.0


def set_threads() -> None:
    """One torch thread unless the user says otherwise (2 threads were 10-100x slower on shared 2-core CPUs)."""
    n = int(os.environ.get("LAB_NUM_THREADS", "1"))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def quiet_libraries() -> None:
    """The lab prints its own progress; silence the libraries' bars and advisory warnings."""
    import warnings

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(trl|peft|transformers)")


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------- resolution


def hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read at call time (huggingface_hub reads it at import)."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def looks_like_path(spec: str) -> bool:
    """A local path, not a hub id: starts with . / ~, more than one '/', a trailing '/', or a '//'."""
    return (spec.startswith((".", "/", "~")) or spec.count("/") > 1 or spec.endswith("/")
            or "//" in spec or os.sep + os.sep in spec or (os.sep != "/" and os.sep in spec))


def _zoo(spec: str) -> str:
    name = spec[4:]
    path = ZOO_DIR / name
    if (path / "config.json").is_file():
        return str(path)
    from lab.zoo.real import REAL_MODELS, resolve_real

    real = resolve_real(name)
    if real is not None:
        return real
    known = sorted(p.name for p in ZOO_DIR.iterdir() if (p / "config.json").is_file()) if ZOO_DIR.is_dir() else []
    raise LabError(f"model '{spec}': no zoo checkpoint '{name}' (organism checkpoints: {', '.join(known) or 'none'}, "
                   f"build one with `lab zoo build {name}`; real models: {', '.join(sorted(REAL_MODELS))})")


def _hub(spec: str) -> str:
    """The local snapshot folder of a cached hub model (never a network call when it is cached)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(spec, local_files_only=True)
    except LocalEntryNotFoundError:
        pass
    except Exception as e:  # an invalid repo id ('a/b c'), a broken cache entry
        raise LabError(f"model '{spec}': not a local folder and not a valid hub id ({str(e).splitlines()[0]})") from None
    from huggingface_hub import constants

    where = f"the local Hugging Face cache ({constants.HF_HUB_CACHE})"
    if hub_offline():
        raise LabError(f"model '{spec}': no local folder of that name, and hub id '{spec}' is not in {where}; "
                       f"HF_HUB_OFFLINE=1 forbids downloading it (download it on a connected machine with "
                       f"`huggingface-cli download {spec}`, or pass a local folder)")
    from huggingface_hub import model_info

    try:
        model_info(spec, timeout=HUB_PROBE_TIMEOUT_S)
    except Exception as e:
        raise LabError(f"model '{spec}': no local folder of that name, hub id '{spec}' is not in {where}, and the hub "
                       f"could not be reached to download it ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); "
                       f"download it with `huggingface-cli download {spec}` or pass a local folder") from None
    try:
        return snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"])
    except Exception as e:
        raise LabError(f"model '{spec}': download from the hub failed ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None


def resolve(spec: str) -> str:
    """Map a model spec to a local folder `from_pretrained` takes; LabError naming what is missing."""
    if not isinstance(spec, str) or not spec.strip():
        raise LabError(f"model {spec!r}: expected a local model folder, a *.gguf file, a hub id 'org/name' or zoo:<name>")
    if spec.startswith("zoo:"):
        return _zoo(spec)
    p = Path(spec).expanduser()
    if spec.lower().endswith(".gguf"):
        from lab.zoo.real import gguf_folder

        return gguf_folder(p, spec)
    if p.exists():
        if not p.is_dir() or not (p / "config.json").is_file():
            raise LabError(f"model '{spec}': {'directory has no config.json' if p.is_dir() else 'not a directory'} "
                           f"(expected a Hugging Face model folder, a *.gguf file, a hub id or zoo:<name>)")
        return str(p)
    if looks_like_path(spec) or spec.count("/") != 1:
        raise LabError(f"model '{spec}': local folder {p} does not exist (expected a local model folder, "
                       f"a *.gguf file, a hub id 'org/name', or zoo:<name>)")
    return _hub(spec)


# ---------------------------------------------------------------- tokenizer

GENERIC_TOKENIZER_CLASSES = {"TokenizersBackend", "PreTrainedTokenizerFast"}


def _tokenizer_class(path: str):
    """AutoTokenizer, except for checkpoints whose tokenizer_config declares the generic class.

    transformers 5's AutoTokenizer maps model_type qwen2 to Qwen2Tokenizer even when the checkpoint
    declares TokenizersBackend, and Qwen2Tokenizer replaces the pre-tokenizer saved in tokenizer.json
    with Qwen's regex. For the lab's organism (trained with its own pre-tokenizer: Han/Kana per
    character, Devanagari per word) that silently changed the token ids at load time: Hindi prompts
    became byte fragments the model never saw in training. A declared generic class means "use
    tokenizer.json as saved", so it is loaded as TokenizersBackend.
    """
    from transformers import AutoTokenizer
    from transformers.models.auto.tokenization_auto import get_tokenizer_config

    try:
        declared = get_tokenizer_config(path).get("tokenizer_class")
    except Exception:  # no tokenizer_config.json: AutoTokenizer decides (and reports what is missing)
        declared = None
    if declared in GENERIC_TOKENIZER_CLASSES:
        from transformers import TokenizersBackend

        return TokenizersBackend
    return AutoTokenizer


def load_tokenizer(spec: str, *, trust_remote_code: bool = False, path: str | None = None):
    path = path or resolve(spec)
    try:
        tok = _tokenizer_class(path).from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise LabError(f"model '{spec}': could not load tokenizer ({str(e).splitlines()[0]})") from None
    if not tok.chat_template:
        raise LabError(f"model '{spec}': tokenizer has no chat template (the lab evaluates chat models)")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


# ---------------------------------------------------------------- model

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
QUANT_KEYS = {"load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type", "bnb_4bit_compute_dtype",
              "bnb_4bit_use_double_quant", "bnb_4bit_quant_storage", "llm_int8_threshold", "llm_int8_skip_modules"}


def _dtype(value, dev: torch.device, what: str = "dtype") -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    if value in (None, "auto"):
        if dev.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(value, str) and value.lower() in DTYPES:
        return DTYPES[value.lower()]
    raise LabError(f"{what} {value!r}: expected one of {', '.join(sorted(DTYPES))} or auto")


def quantization_config(quantization: dict, dev: torch.device):
    """A BitsAndBytesConfig from `load_in_4bit` / `bnb_4bit_*` options (CUDA + bitsandbytes only)."""
    unknown = sorted(set(quantization) - QUANT_KEYS)
    if unknown:
        raise LabError(f"quantization: unknown key(s) {unknown} (valid: {', '.join(sorted(QUANT_KEYS))})")
    if not (quantization.get("load_in_4bit") or quantization.get("load_in_8bit")):
        return None
    if dev.type != "cuda":
        raise LabError("quantization: load_in_4bit / load_in_8bit (QLoRA) needs a CUDA GPU and bitsandbytes; "
                       "this machine has no GPU: remove the quantization options to train in fp32 on CPU")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise LabError("quantization: load_in_4bit / load_in_8bit needs the bitsandbytes package: "
                       "`pip install bitsandbytes`") from None
    from transformers import BitsAndBytesConfig

    kw = dict(quantization)
    if "bnb_4bit_compute_dtype" in kw:
        kw["bnb_4bit_compute_dtype"] = _dtype(kw["bnb_4bit_compute_dtype"], dev, "quantization.bnb_4bit_compute_dtype")
    elif kw.get("load_in_4bit"):
        kw["bnb_4bit_compute_dtype"] = _dtype(None, dev)
    if kw.get("load_in_4bit"):
        kw.setdefault("bnb_4bit_quant_type", "nf4")
    return BitsAndBytesConfig(**kw)


def load_model(spec: str, *, trust_remote_code: bool = False, quantization: dict | None = None,
               dtype: torch.dtype | str | None = None, device_: torch.device | str | None = None):
    """Return (model, tokenizer) in eval mode. fp32 on CPU, bf16 on GPU unless `dtype`; safetensors only.

    quantization: bitsandbytes options (`load_in_4bit: true`, `bnb_4bit_quant_type: nf4`,
    `bnb_4bit_compute_dtype: bf16`, `bnb_4bit_use_double_quant: true`) — CUDA only; LabError on CPU.
    """
    from transformers import AutoModelForCausalLM

    set_threads()
    quiet_libraries()
    path = resolve(spec)
    tok = load_tokenizer(spec, trust_remote_code=trust_remote_code, path=path)
    dev = torch.device(device_) if device_ is not None else device()
    dt = _dtype(dtype, dev)
    bnb = quantization_config(quantization, dev) if quantization else None
    kw = dict(dtype=dt, use_safetensors=True, trust_remote_code=trust_remote_code)
    if bnb is not None:
        kw.update(quantization_config=bnb, device_map={"": dev.index or 0})
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kw)
    except (OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "safetensors" in msg.lower() or not any(Path(path).glob("*.safetensors")):
            msg += " — the lab loads safetensors weights only (no pickled .bin files)"
        raise LabError(f"model '{spec}': could not load weights ({msg})") from None
    if bnb is None:
        model.to(dev)
    model.eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


# ---------------------------------------------------------------- chat template facts


def end_of_turn_ids(tok) -> list[int]:
    """The special token(s) the chat template writes right after an assistant message's text.

    That is what a chat model emits to end its turn (<|im_end|>, <|eot_id|>, <end_of_turn>), whatever
    the checkpoint's generation_config says (base-model configs often name only <|endoftext|>).
    """
    cached = getattr(tok, "_lab_end_of_turn", None)
    if cached is not None:
        return cached
    out: list[int] = []
    marker = "Xq7marker"
    try:
        text = tok.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
                                       tokenize=False)
    except Exception:  # templates that refuse this conversation: fall back to generation_config / eos
        text = ""
    if marker in text:
        tail = text[text.rindex(marker) + len(marker):]
        special = set(tok.all_special_ids) | {i for t, i in tok.get_added_vocab().items()
                                              if getattr(tok.added_tokens_decoder.get(i), "special", False)}
        for t in tok(tail, add_special_tokens=False)["input_ids"]:
            if t in special:
                out.append(t)
                break
            if tok.decode([t]).strip():  # visible text before any special token: no end-of-turn marker
                break
    try:
        tok._lab_end_of_turn = out
    except AttributeError:
        pass
    return out


def eos_ids(model, tok) -> list[int]:
    """Every id that ends a generated answer: generation_config's eos list (Llama-3.1 has three), the
    tokenizer's eos, and the chat template's end-of-turn token."""
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    for extra in [tok.eos_token_id, *end_of_turn_ids(tok)]:
        if extra is not None and extra not in ids:
            ids.append(extra)
    return ids


def accepts_system(tok) -> bool:
    """Whether the chat template renders a system message (Gemma-2's raises on one)."""
    cached = getattr(tok, "_lab_accepts_system", None)
    if cached is not None:
        return cached
    try:
        tok.apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}], tokenize=False)
        ok = True
    except Exception:
        ok = False
    try:
        tok._lab_accepts_system = ok
    except AttributeError:
        pass
    return ok


def chat_messages(tok, prompt: str, system: str | None = None, *, fold_system: bool = True) -> list[dict]:
    """The messages for one user prompt. A system prompt on a template that rejects the system role
    (Gemma-2) is folded into the user turn ("<system>\\n\\n<prompt>", what Gemma's documentation
    recommends), or with fold_system=False raises a LabError naming the problem."""
    if not system:
        return [{"role": "user", "content": prompt}]
    if accepts_system(tok):
        return [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
    if not fold_system:
        raise LabError("system prompt: this model's chat template rejects a system message (e.g. Gemma-2); "
                       "drop --system, or let the lab fold it into the user turn")
    return [{"role": "user", "content": f"{system}\n\n{prompt}"}]


def labelled_logits(model, labels: torch.Tensor, **inputs):
    """The forward of a causal-LM loss with the LM head only where a label exists: (output, logits of the
    positions that predict a labelled token (N, V), those tokens (N,)). `logits_to_keep` with a boolean
    mask (the model's own forward, so soft-capping and logit scales still apply); a model whose forward
    lacks it runs every position through the head (its targets are -100 where unlabelled)."""
    import torch.nn.functional as F

    targets = F.pad(labels, (0, 1), value=-100)[:, 1:]  # the token each position predicts
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if _forward_takes_logits_to_keep(type(getattr(inner, "module", inner))):  # (peft, DDP unwrapped)
        keep = targets != -100
        out = model(**inputs, logits_to_keep=keep)
        return out, out.logits, targets[keep]
    out = model(**inputs)
    return out, out.logits.flatten(0, 1), targets.flatten()


@functools.lru_cache(maxsize=None)  # once per model class, not once per training step
def _forward_takes_logits_to_keep(cls) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters
