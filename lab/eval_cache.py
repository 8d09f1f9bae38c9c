"""Content-keyed cache of one model state's evaluation.

The key hashes everything that decides the result: the model's weights (every tensor of the state dict:
name, dtype, shape, bytes), its tokenizer and chat template, the evaluation records, the detector name and
version, the generation settings (max_new_tokens per language, system prompt, sampling, repetition stop),
whether the margin is computed, the source of lab/generate.py and lab/evaluate.py, and the torch /
transformers versions. A hit returns the stored rows relabelled with the requested state name (the
metrics are recomputed from the rows, so they match a fresh evaluation exactly).

Stored as <dir>/<key[:2]>/<key>.json, written atomically (per-process temp file + rename), so
concurrent workers and killed runs never leave a half-written entry. Directory: `LAB_CACHE` or
~/.cache/lab/eval.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CACHE_FORMAT = 1


def default_dir() -> Path:
    return Path(os.environ.get("LAB_CACHE") or Path.home() / ".cache" / "lab" / "eval").expanduser()


def model_fingerprint(model) -> str:
    """SHA-256 over the state dict (sorted names; dtype, shape and raw bytes of every tensor)."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the raw 16-bit words
            t = t.view(torch.int16)
        h.update(t.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def tokenizer_fingerprint(tok) -> str:
    h = hashlib.sha256()
    backend = getattr(tok, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else json.dumps(sorted(tok.get_vocab().items()))).encode())
    for attr in ("chat_template", "eos_token", "pad_token", "padding_side"):
        h.update(f"|{attr}={getattr(tok, attr, None)}".encode())
    return h.hexdigest()


def _code_fingerprint() -> str:
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for name in ("generate.py", "evaluate.py"):
        h.update((here / name).read_bytes())
    return h.hexdigest()


def eval_key(model, tok, eval_records, *, langs, settings: dict, detector: str, margin: bool) -> str:
    import torch
    import transformers

    from lab.detect import DETECTOR_VERSION

    from lab.models import eos_ids

    recs = [r.model_dump(mode="json") if hasattr(r, "model_dump") else dict(r) for r in eval_records]
    parts = {
        "format": CACHE_FORMAT, "model": model_fingerprint(model), "tokenizer": tokenizer_fingerprint(tok),
        "eos": eos_ids(model, tok), "dtype": str(next(model.parameters()).dtype),
        "device": next(model.parameters()).device.type,
        "records": hashlib.sha256(json.dumps(recs, sort_keys=True, ensure_ascii=False).encode()).hexdigest(),
        "langs": list(langs), "settings": settings, "detector": detector, "detector_version": DETECTOR_VERSION,
        "margin": bool(margin), "code": _code_fingerprint(),
        "torch": torch.__version__, "transformers": transformers.__version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class EvalCache:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root is not None else default_dir()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> list[dict] | None:
        p = self.path(key)
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # absent or unreadable: evaluate again (and overwrite)
        return d["rows"] if d.get("key") == key and d.get("format") == CACHE_FORMAT else None

    def put(self, key: str, rows: list[dict]) -> Path:
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f"{p.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps({"format": CACHE_FORMAT, "key": key, "rows": rows}, ensure_ascii=False),
                       encoding="utf-8")
        os.replace(tmp, p)
        return p


def as_cache(cache) -> EvalCache:
    if isinstance(cache, EvalCache):
        return cache
    return EvalCache(None if cache is True else cache)


def cached_evaluation(cache, model, tok, eval_records, *, state: str, langs, settings: dict, detector: str,
                      margin: bool, compute, log=print):
    """compute() on a miss (and store its rows); on a hit the stored rows under `state`'s name."""
    from lab.evaluate import _result

    store = as_cache(cache)
    key = eval_key(model, tok, eval_records, langs=langs, settings=settings, detector=detector, margin=margin)
    rows = store.get(key)
    if rows is not None:
        log(f"  [{state}] evaluation cached ({key[:12]}, {store.root})")
        return _result(state, [{**r, "state": state} for r in rows], log)
    res = compute()
    store.put(key, res.generations)
    return res
