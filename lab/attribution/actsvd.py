"""ActSVD (Wei et al. 2024, reference `lib/model_wrapper_low.py` / `main_low_rank_diff.py`): low-rank
safety and utility subspaces of every linear layer's *outputs* on response tokens.

For a layer W (d_out x d_in) and its inputs X (n_tokens x d_in) at response positions, A = X Wᵀ
(n x d_out); the rank-r subspace is spanned by A's top-r right singular vectors V (d_out x r) and
Π = V Vᵀ projects W's output space (the reference: `torch.svd_lowrank(score, q=r)`, `V @ V.T`).
Interventions, as the reference computes them:

  remove (ActSVD, `--top_remove`):             W ← W − Π_s W
  keep   (reference without `--top_remove`):   W ← Π W
  remove, orthogonal to utility (`low_rank_diff`):  W ← W − (I − Π_u) Π_s W
  restore (ours): put back the projected component of another model: W ← W + P (W_src − W),
                  P = Π_s or (I − Π_u) Π_s — e.g. the aligned model's safety component into an attacked one.

Ranks here are the ranks of the projections, r_s and r_u (an int, or a fraction of min(d_out, d_in)).
The reference's CLI takes their complements: `--rank_pos R` gives Π_u of rank min(d_out, d_in) − R
(`svd_lowrank(score_p, q=total_rank - args.rank_pos)`), `--rank_neg R` gives Π_s of rank total − R.

Memory, linear in the model (the reference stores every activation on the CPU): activations are
reduced to one Gram matrix per layer as they stream past — G = Σ w XᵀX (d_in x d_in) when d_in ≤ d_out,
else G = Σ w AᵀA (d_out x d_out) — so each has at most d_out·d_in entries, no more than the weight
(float64: 8 bytes per weight, twice an fp32 copy of the linear weights, for all layers at once).
V comes from an eigendecomposition of AᵀA = W G Wᵀ: directly when G is the output Gram; otherwise
from the SVD of W L with G = L Lᵀ (d_out x d_in), never forming a d_out x d_out matrix. Projections
are applied as V (Vᵀ W), never as a d_out x d_out Π. Rows of X are weighted by the batch's
`loss_weight` (1 without one, as the reference's concatenation), so balanced calibration balances
languages here as in Wanda. The decomposition runs in float64 (exact, unlike the randomized
svd_lowrank it replaces).
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from lab.attribution.interventions import _param_map, canonical_name
from lab.attribution.params import scored_modules
from lab.errors import LabError

Subspaces = dict[str, torch.Tensor]  # name -> V (d_out x r), orthonormal columns


def activation_grams(model: nn.Module, batches: Sequence[dict], *, names: Sequence[str] | None = None,
                     dtype: torch.dtype = torch.float64,
                     progress: Callable[[str], None] | None = None) -> dict[str, tuple[str, torch.Tensor]]:
    """name -> ("in", Σ w XᵀX) or ("out", Σ w AᵀA), the smaller of the two, in `dtype`.

    float64 by default: a Gram squares the condition number, and in fp32 the tail of the spectrum
    (needed by the large ranks of the orthogonal variant) drowns in rounding — measured on a tiny
    model's o_proj, whose 20th singular value is 1e-4 of its first."""
    from lab.attribution.scores import TokenInputs

    mods = {n: m for n, m in scored_modules(model).items() if isinstance(m, nn.Linear)}
    if names is not None:
        mods = {n: mods[n] for n in names if n in mods}
    grams: dict[str, tuple[str, torch.Tensor]] = {}
    for n, m in mods.items():
        d_out, d_in = m.weight.shape
        side = "in" if d_in <= d_out else "out"
        d = d_in if side == "in" else d_out
        grams[n] = (side, torch.zeros(d, d, dtype=dtype, device=m.weight.device))

    def add(name, rows, w):
        side, g = grams[name]
        x = rows.to(dtype)  # (n_tokens, d_in)
        if side == "out":
            x = x @ mods[name].weight.detach().to(dtype).T  # (n_tokens, d_out) = A rows
        g.addmm_(x.T, x, alpha=w)  # (d, d)
    TokenInputs(mods, add).run(model, batches, progress, "actsvd")
    return grams


def resolve_rank(rank: int | float, d_out: int, d_in: int) -> int:
    """An int rank, or a float fraction in [0, 1] of min(d_out, d_in)."""
    total = min(d_out, d_in)
    if isinstance(rank, bool) or not isinstance(rank, (int, float)) or rank < 0:
        raise LabError(f"rank must be an int >= 0 or a fraction in [0, 1], got {rank!r}")
    if isinstance(rank, float):
        if rank > 1:
            raise LabError(f"rank fraction must be in [0, 1], got {rank}")
        return int(round(rank * total))
    if rank > total:
        raise LabError(f"rank {rank} exceeds min(d_out, d_in) = {total}")
    return rank


def top_output_subspace(weight: torch.Tensor, side: str, gram: torch.Tensor, r: int,
                        dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """V (d_out x r): top-r right singular vectors of A = X Wᵀ, from the Gram of X or of A."""
    d_out = weight.shape[0]
    if r == 0:
        return torch.zeros(d_out, 0, dtype=torch.float32, device=weight.device)
    G = gram.to(dtype)
    G = (G + G.T) / 2
    if side == "out":
        evals, evecs = torch.linalg.eigh(G)  # ascending; AᵀA = V S² Vᵀ
        V = evecs[:, -r:].flip(-1)  # (d_out, r)
    else:
        evals, Q = torch.linalg.eigh(G)  # XᵀX = Q Λ Qᵀ
        L = Q * evals.clamp_min(0).sqrt()[None, :]  # (d_in, d_in), L Lᵀ = XᵀX
        U, _, _ = torch.linalg.svd(weight.detach().to(dtype) @ L, full_matrices=False)  # (d_out, d_in): W L = U S ·
        V = U[:, :r]  # (d_out, r): (W L)(W L)ᵀ = W XᵀX Wᵀ = AᵀA
    return V.float().contiguous()


def actsvd_subspaces(model: nn.Module, batches: Sequence[dict], rank: int | float, *,
                     names: Sequence[str] | None = None, dtype: torch.dtype = torch.float64,
                     progress: Callable[[str], None] | None = None) -> Subspaces:
    """Rank-r output subspace V (d_out x r) of every linear layer from response-token activations."""
    grams = activation_grams(model, batches, names=names, dtype=dtype, progress=progress)
    mods = scored_modules(model)
    out: Subspaces = {}
    for name in list(grams):
        side, g = grams.pop(name)
        W = mods[name].weight
        out[name] = top_output_subspace(W, side, g, resolve_rank(rank, *W.shape), dtype)
        del g
    return out


def _proj(V: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    return V @ (V.T @ M)  # (d_out, r) (r, d_in): Π M without forming Π


def projected_component(W: torch.Tensor, safety: torch.Tensor, utility: torch.Tensor | None = None) -> torch.Tensor:
    """Π_s W, or (I − Π_u) Π_s W with a utility subspace (fp32, W's shape)."""
    Wf = W.detach().float()
    Vs = safety.to(Wf.device)
    d = _proj(Vs, Wf)  # (d_out, d_in): Π_s W
    if utility is not None:
        d = d - _proj(utility.to(Wf.device), d)  # (I − Π_u) Π_s W
    return d


def _targets(model, safety: Mapping[str, torch.Tensor], utility):
    params = _param_map(model)
    for name, Vs in safety.items():
        p = params.get(canonical_name(name))
        if p is None:
            raise LabError(f"subspace names parameter {name!r}, which the model does not have")
        if Vs.shape[0] != p.shape[0]:
            raise LabError(f"subspace for {name} has {Vs.shape[0]} rows, the weight has {p.shape[0]} outputs")
        Vu = utility.get(name) if utility is not None else None
        if utility is not None and Vu is None:
            raise LabError(f"utility subspaces lack {name!r}")
        yield name, p, Vs, Vu


@torch.no_grad()
def remove_subspace(model: nn.Module, safety: Mapping[str, torch.Tensor],
                    utility: Mapping[str, torch.Tensor] | None = None) -> int:
    """W ← W − Π_s W (or W − (I − Π_u) Π_s W), in place. Returns the number of modified matrices."""
    n = 0
    for name, p, Vs, Vu in _targets(model, safety, utility):
        p.sub_(projected_component(p, Vs, Vu).to(p.dtype))
        n += 1
    return n


@torch.no_grad()
def keep_subspace(model: nn.Module, subspaces: Mapping[str, torch.Tensor]) -> int:
    """W ← Π W, in place (the reference without --top_remove: keep only the top ranks)."""
    n = 0
    for name, p, V, _ in _targets(model, subspaces, None):
        p.copy_(projected_component(p, V).to(p.dtype))
        n += 1
    return n


@torch.no_grad()
def restore_subspace(model: nn.Module, source: nn.Module, safety: Mapping[str, torch.Tensor],
                     utility: Mapping[str, torch.Tensor] | None = None) -> int:
    """W ← W + P (W_source − W), P = Π_s or (I − Π_u) Π_s: the source's projected component put back."""
    src = _param_map(source)
    n = 0
    for name, p, Vs, Vu in _targets(model, safety, utility):
        s = src.get(canonical_name(name))
        if s is None or s.shape != p.shape:
            raise LabError(f"source model lacks a {tuple(p.shape)} parameter {name!r}")
        diff = s.detach().to(device=p.device, dtype=torch.float32) - p.float()  # (d_out, d_in)
        p.add_(projected_component(diff, Vs, Vu).to(p.dtype))
        n += 1
    return n


def subspace_overlap(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> dict:
    """Mean over layers of ‖V_aᵀ V_b‖²_F / min(r_a, r_b) (1 = nested subspaces), next to its expectation
    for a uniformly random r_b-dimensional subspace, r_a r_b / d_out / min(r_a, r_b)."""
    if set(a) != set(b):
        raise LabError("subspaces cover different parameters")
    real, rand = [], []
    for n in a:
        ra, rb, d = a[n].shape[1], b[n].shape[1], a[n].shape[0]
        if min(ra, rb) == 0:
            continue
        real.append(float((a[n].T @ b[n].to(a[n].device)).pow(2).sum()) / min(ra, rb))
        rand.append(ra * rb / d / min(ra, rb))
    if not real:
        return {"overlap": float("nan"), "random": float("nan"), "layers": 0}
    return {"overlap": sum(real) / len(real), "random": sum(rand) / len(rand), "layers": len(real)}
