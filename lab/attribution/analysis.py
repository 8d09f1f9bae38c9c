"""Analyses of masks: per-language Jaccard overlap against random masks of equal sizes, and where
masks sit (layer x module heatmap).

Random baseline: for each real mask, a random mask with the SAME number of selected weights in EACH
matrix (positions uniform within the matrix). Jaccard of two such random masks is the overlap
expected by chance given mask sizes and their layer/module distribution; we also report the analytic
value for globally uniform positions, E|A∩B| = |A||B|/N, J ≈ E∩ / (|A| + |B| − E∩).
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Mapping

import torch

from lab.attribution.masks import Mask, _top_k_exact
from lab.attribution.scores import layer_index, module_kind
from lab.errors import LabError
from lab.report import save_figure


def _check_same(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> None:
    if set(a) != set(b):
        raise LabError("masks cover different parameters")
    for n in a:
        if a[n].shape != b[n].shape:
            raise LabError(f"masks disagree on the shape of {n}: {tuple(a[n].shape)} vs {tuple(b[n].shape)}")


def intersection_union(a: Mask, b: Mask) -> tuple[int, int]:
    _check_same(a, b)
    inter = sum(int((a[n] & b[n]).sum().item()) for n in a)
    union = sum(int((a[n] | b[n]).sum().item()) for n in a)
    return inter, union


def jaccard(a: Mask, b: Mask) -> float:
    """|A ∩ B| / |A ∪ B| over all parameters (1.0 when both masks are empty)."""
    inter, union = intersection_union(a, b)
    return inter / union if union else 1.0


def random_mask_like(mask: Mask, seed: int = 0, match: str = "per-matrix") -> Mask:
    """A random mask with the same size as `mask`: same count per matrix ("per-matrix") or the same
    total count with positions uniform over all matrices ("global")."""
    g = torch.Generator().manual_seed(seed)
    rnd = {n: torch.rand(m.shape, generator=g).to(m.device) for n, m in mask.items()}
    if match == "per-matrix":
        out: Mask = {}
        for n, m in mask.items():
            out.update(_top_k_exact([(n, rnd[n])], int(m.sum().item())))
        return out
    if match == "global":
        return _top_k_exact(list(rnd.items()), sum(int(m.sum().item()) for m in mask.values()))
    raise LabError(f"match must be 'per-matrix' or 'global', got {match!r}")


def expected_uniform_jaccard(size_a: int, size_b: int, total: int) -> float:
    if total == 0 or size_a + size_b == 0:
        return 1.0
    e = size_a * size_b / total
    return e / (size_a + size_b - e)


def overlap_table(masks: Mapping[str, Mask], *, seed: int = 0, n_random: int = 3) -> list[dict]:
    """One row per pair of masks (e.g. per-language safety masks): jaccard, random-mask jaccard (mean
    over n_random draws of size-matched random masks), the analytic uniform expectation and the ratio."""
    labels = list(masks)
    sizes = {k: sum(int(m.sum().item()) for m in masks[k].values()) for k in labels}
    total = sum(m.numel() for m in masks[labels[0]].values()) if labels else 0
    rand = {k: [random_mask_like(masks[k], seed=seed * 7919 + 31 * i + j, match="per-matrix")
                for j in range(n_random)] for i, k in enumerate(labels)}
    rows = []
    for a, b in itertools.combinations(labels, 2):
        j = jaccard(masks[a], masks[b])
        jr = sum(jaccard(rand[a][r], rand[b][r]) for r in range(n_random)) / max(n_random, 1)
        rows.append({"a": a, "b": b, "size_a": sizes[a], "size_b": sizes[b], "jaccard": j,
                     "random_jaccard": jr, "uniform_jaccard": expected_uniform_jaccard(sizes[a], sizes[b], total),
                     "ratio": j / jr if jr > 0 else float("inf")})
    return rows


def overlap_matrix_markdown(masks: Mapping[str, Mask], rows: list[dict]) -> str:
    """Square table: upper triangle real Jaccard, lower triangle the random-mask Jaccard."""
    labels = list(masks)
    cell = {(r["a"], r["b"]): r for r in rows}
    lines = ["| | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for i, a in enumerate(labels):
        cells = []
        for j, b in enumerate(labels):
            if i == j:
                cells.append("—")
            elif i < j:
                cells.append(f"**{cell[(a, b)]['jaccard']:.3f}**")
            else:
                cells.append(f"{cell[(b, a)]['random_jaccard']:.3f}")
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Upper triangle (bold): Jaccard of the real masks; lower triangle: Jaccard of random masks "
                 "with the same per-matrix sizes (mean of draws).")
    return "\n".join(lines)


def layer_module_fractions(mask: Mask) -> tuple[list[int], list[str], list[list[float]]]:
    """Fraction of each (layer, module kind) matrix selected; parameters outside blocks are skipped."""
    cells: dict[tuple[int, str], float] = {}
    for n, m in mask.items():
        li = layer_index(n)
        if li is None:
            continue
        cells[(li, module_kind(n))] = float(m.float().mean().item())
    layers = sorted({k[0] for k in cells})
    kinds = sorted({k[1] for k in cells}, key=lambda s: (not ("attn" in s or "attention" in s), s))
    grid = [[cells.get((l, k), float("nan")) for k in kinds] for l in layers]
    return layers, kinds, grid


def heatmap(mask: Mask, path: str | Path, title: str = "mask density") -> Path:
    """Layer x module PNG of the fraction of weights in the mask (matplotlib, Agg backend)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, kinds, grid = layer_module_fractions(mask)
    if not layers:
        raise LabError("mask has no parameters inside numbered blocks to plot")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(1.1 * len(kinds) + 2.5, 0.45 * len(layers) + 2))
    data = torch.tensor(grid).numpy()
    im = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0.0)
    ax.set_xticks(range(len(kinds)), [k.split(".")[-1] for k in kinds], rotation=45, ha="right")
    ax.set_yticks(range(len(layers)), [str(l) for l in layers])
    ax.set_xlabel("module")
    ax.set_ylabel("layer")
    ax.set_title(title)
    for i in range(len(layers)):
        for j in range(len(kinds)):
            v = data[i, j]
            if v == v:
                ax.text(j, i, f"{100 * v:.1f}", ha="center", va="center", fontsize=7,
                        color="white" if v < data[data == data].max() * 0.6 else "black")
    fig.colorbar(im, ax=ax, label="fraction of weights in mask")
    fig.tight_layout()
    save_figure(fig, path)
    return path
