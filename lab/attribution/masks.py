"""Masks from scores: top-q %, and "top-q % safety minus top-p % utility" (Wei et al. 2024).

q and p are PERCENT (q=5 means the top 5 % of weights), matching the issue and the recipe.

Scope:
  "per-matrix": each weight matrix keeps k(q, numel) of its own weights;
  "per-row":    each output row keeps k(q, in_features) of its own weights (Wanda's convention and the
                reference's plain masks, `torch.sort(W_metric, dim=-1, stable=True)` per row); 1-D
                parameters count as one row;
  "global":     k(q, N_total) weights over all scored matrices together.
k(q, n) = round(q/100 * n) (`rounding="round"`, default) or int(q/100 * n) (`rounding="floor"`, what the
reference's `int(W.shape[1] * sparsity_ratio)` and `int(q * numel)` compute).

Selection is exact: k elements are chosen even with ties; ties at the threshold go to the lowest
flat index, parameters in dict order (this is what a stable descending sort of the concatenated
scores would pick; tests compare against that brute force). The global threshold is found by
bisection over float32 bit patterns (31 counting passes, no concatenated copy of the scores), so a
7-8 B model's scores never need to be gathered into one tensor.

On disk a mask is `NAME.safetensors` (one bool tensor per parameter name) + `NAME.json` (metadata:
method, q, p, data, langs, scope, model, per-module counts). Scores are saved the same way with
float tensors (bf16 or fp32).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lab.errors import LabError

Mask = dict[str, torch.Tensor]
SCOPES = ("global", "per-matrix", "per-row")
ROUNDINGS = ("round", "floor")
_ROW_CHUNK = 1024
_CHUNK = 1 << 24


def _check_pct(x: float, what: str) -> float:
    if x is None or not (0.0 <= float(x) <= 100.0) or math.isnan(float(x)):
        raise LabError(f"{what} must be a percentage in [0, 100], got {x!r}")
    return float(x)


def _flat_chunks(t: torch.Tensor):
    f = t.reshape(-1)
    for i in range(0, f.numel(), _CHUNK):
        yield f[i:i + _CHUNK]


def _count_ge(tensors, thr: float) -> int:
    return sum(int((c.float() >= thr).sum().item()) for t in tensors for c in _flat_chunks(t))


def _validate(scores: Mapping[str, torch.Tensor]) -> None:
    if not scores:
        raise LabError("no scores given")
    for name, s in scores.items():
        if s.is_floating_point():
            bad = torch.isnan(s).any() or (s < 0).any() or torch.isinf(s).any()
            if bool(bad):
                raise LabError(f"scores for {name} contain NaN, inf or negative values")


def kth_largest(tensors: list[torch.Tensor], k: int) -> float:
    """The k-th largest value (k >= 1) among non-negative finite tensors, by float32 bit bisection."""
    lo, hi = 0, 0x7F800000  # bit patterns of 0.0 and +inf; count(>= 0.0) = N >= k, count(>= inf) = 0 < k
    while hi - lo > 1:
        mid = (lo + hi) // 2
        thr = torch.tensor(mid, dtype=torch.int32).view(torch.float32).item()
        if _count_ge(tensors, thr) >= k:
            lo = mid
        else:
            hi = mid
    return torch.tensor(lo, dtype=torch.int32).view(torch.float32).item()


def _top_k_exact(named: list[tuple[str, torch.Tensor]], k: int) -> Mask:
    out: Mask = {n: torch.zeros(s.shape, dtype=torch.bool, device=s.device) for n, s in named}
    if k <= 0:
        return out
    total = sum(s.numel() for _, s in named)
    if k >= total:
        return {n: torch.ones(s.shape, dtype=torch.bool, device=s.device) for n, s in named}
    thr = kth_largest([s for _, s in named], k)
    taken = 0
    for n, s in named:
        out[n] = s.float() > thr
        taken += int(out[n].sum().item())
    rest = k - taken
    for n, s in named:
        if rest <= 0:
            break
        eq = (s.float() == thr).reshape(-1)
        idx = eq.nonzero().reshape(-1)[:rest]
        out[n].reshape(-1)[idx] = True
        rest -= idx.numel()
    return out


def n_selected(q: float, n: int, rounding: str = "round") -> int:
    """How many of n weights the top q % keeps."""
    if rounding not in ROUNDINGS:
        raise LabError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    x = q / 100.0 * n
    return round(x) if rounding == "round" else int(math.floor(x + 1e-9))


def _row_top_k(s: torch.Tensor, k: int) -> torch.Tensor:
    """Top k of every row (ties: lowest column), by a stable descending sort of row chunks."""
    s2 = s.reshape(1, -1) if s.dim() < 2 else s.reshape(s.shape[0], -1)  # (rows, cols)
    out = torch.zeros(s2.shape, dtype=torch.bool, device=s.device)
    if k > 0:
        for r in range(0, s2.shape[0], _ROW_CHUNK):
            idx = torch.sort(s2[r:r + _ROW_CHUNK].float(), dim=1, descending=True, stable=True).indices[:, :k]
            out[r:r + _ROW_CHUNK].scatter_(1, idx, True)  # (chunk, cols)
    return out.reshape(s.shape)


def top_q_mask(scores: Mapping[str, torch.Tensor], q: float, scope: str = "per-matrix",
               rounding: str = "round") -> Mask:
    """Boolean mask of the top q % of weights by score (per matrix, per output row, or over all matrices)."""
    q = _check_pct(q, "q")
    if scope not in SCOPES:
        raise LabError(f"scope must be one of {SCOPES}, got {scope!r}")
    _validate(scores)
    if scope == "global":
        n = sum(s.numel() for s in scores.values())
        return _top_k_exact(list(scores.items()), n_selected(q, n, rounding))
    out: Mask = {}
    for name, s in scores.items():
        if scope == "per-row":
            cols = s[0].numel() if s.dim() >= 2 else s.numel()
            out[name] = _row_top_k(s, n_selected(q, cols, rounding))
        else:
            out.update(_top_k_exact([(name, s)], n_selected(q, s.numel(), rounding)))
    return out


def set_difference_mask(safety: Mapping[str, torch.Tensor], utility: Mapping[str, torch.Tensor] | None,
                        q: float, p: float | None, scope: str = "per-matrix", rounding: str = "round") -> Mask:
    """top-q % by safety score AND NOT top-p % by utility score (same scope). p None/0: plain top-q.

    The reference (`prune_wandg_set_difference`) does this per matrix with rounding="floor"."""
    m = top_q_mask(safety, q, scope, rounding)
    if utility is None or not p:
        return m
    if set(utility) != set(safety):
        missing = sorted(set(safety) ^ set(utility))[:3]
        raise LabError(f"safety and utility scores cover different parameters (e.g. {missing})")
    u = top_q_mask({n: utility[n] for n in safety}, p, scope, rounding)
    return {n: m[n] & ~u[n] for n in m}


def mask_counts(mask: Mapping[str, torch.Tensor]) -> dict:
    per = {n: {"selected": int(m.sum().item()), "total": m.numel(), "shape": list(m.shape)} for n, m in mask.items()}
    sel = sum(v["selected"] for v in per.values())
    tot = sum(v["total"] for v in per.values())
    return {"selected": sel, "total": tot, "fraction": sel / tot if tot else 0.0, "per_module": per}


def mask_fraction(mask: Mapping[str, torch.Tensor]) -> float:
    tot = sum(m.numel() for m in mask.values())
    return sum(int(m.sum().item()) for m in mask.values()) / tot if tot else 0.0


def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def _save(tensors: Mapping[str, torch.Tensor], path, meta: dict) -> Path:
    st, js = _paths(path)
    st.parent.mkdir(parents=True, exist_ok=True)
    save_file({n: t.detach().contiguous().cpu() for n, t in tensors.items()}, str(st),
              metadata={"lab": json.dumps(meta, sort_keys=True)[:60000]})
    js.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return st


def _load(path) -> tuple[dict[str, torch.Tensor], dict]:
    st, js = _paths(path)
    if not st.is_file():
        raise LabError(f"{st}: file not found")
    out = {}
    with safe_open(str(st), framework="pt") as f:
        for k in f.keys():
            out[k] = f.get_tensor(k)
    meta = json.loads(js.read_text()) if js.is_file() else {}
    return out, meta


def save_mask(mask: Mapping[str, torch.Tensor], path: str | Path, meta: dict | None = None) -> Path:
    """Write PATH.safetensors (bool per parameter) and PATH.json (meta + per-module counts)."""
    for n, m in mask.items():
        if m.dtype != torch.bool:
            raise LabError(f"mask for {n} is {m.dtype}, expected torch.bool")
    meta = dict(meta or {})
    meta.update(kind="mask", counts=mask_counts(mask))
    return _save(mask, path, meta)


def load_mask(path: str | Path) -> tuple[Mask, dict]:
    mask, meta = _load(path)
    for n, m in mask.items():
        if m.dtype != torch.bool:
            raise LabError(f"{path}: tensor {n} is {m.dtype}, not a boolean mask")
    return mask, meta


def save_scores(scores: Mapping[str, torch.Tensor], path: str | Path, meta: dict | None = None) -> Path:
    meta = dict(meta or {})
    meta.update(kind="scores", n_params=sum(s.numel() for s in scores.values()),
                dtype=str(next(iter(scores.values())).dtype).replace("torch.", ""))
    return _save(scores, path, meta)


def load_scores(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    return _load(path)
