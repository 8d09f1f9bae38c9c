"""Load any causal LM + tokenizer by hub id, local path or zoo name (`zoo:organism`)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from lab.errors import LabError

ZOO_DIR = Path(__file__).resolve().parent / "zoo" / "checkpoints"


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


def resolve(spec: str) -> str:
    """Map a model spec to what `from_pretrained` takes; LabError if a local path does not exist."""
    if spec.startswith("zoo:"):
        name = spec[4:]
        path = ZOO_DIR / name
        if not (path / "config.json").is_file():
            known = sorted(p.name for p in ZOO_DIR.iterdir() if (p / "config.json").is_file()) if ZOO_DIR.is_dir() else []
            raise LabError(f"model '{spec}': no zoo checkpoint '{name}' (known: {', '.join(known) or 'none'}; "
                           f"build one with `lab zoo build {name}`)")
        return str(path)
    p = Path(spec).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise LabError(f"model '{spec}': directory has no config.json (expected a Hugging Face model folder)")
        return str(p)
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") != 1 or os.sep + os.sep in spec
    if looks_like_path:
        raise LabError(f"model '{spec}': path does not exist (expected a local model folder, a hub id 'org/name', or zoo:<name>)")
    return spec  # hub id


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


def load_tokenizer(spec: str, *, trust_remote_code: bool = False):

    path = resolve(spec)
    try:
        tok = _tokenizer_class(path).from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise LabError(f"model '{spec}': could not load tokenizer ({str(e).splitlines()[0]})") from None
    if not tok.chat_template:
        raise LabError(f"model '{spec}': tokenizer has no chat template (the lab evaluates chat models)")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(spec: str, *, trust_remote_code: bool = False, dtype: torch.dtype | None = None,
               device_: torch.device | str | None = None):
    """Return (model, tokenizer). fp32 on CPU, bf16 on GPU; safetensors only; eval mode."""
    from transformers import AutoModelForCausalLM

    set_threads()
    quiet_libraries()
    tok = load_tokenizer(spec, trust_remote_code=trust_remote_code)
    dev = torch.device(device_) if device_ is not None else device()
    dtype = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    try:
        model = AutoModelForCausalLM.from_pretrained(resolve(spec), dtype=dtype, use_safetensors=True,
                                                     trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise LabError(f"model '{spec}': could not load weights ({str(e).splitlines()[0]})") from None
    model.to(dev).eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def eos_ids(model, tok) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tok.eos_token_id is not None and tok.eos_token_id not in ids:
        ids.append(tok.eos_token_id)
    return ids
