"""Round-to-nearest integer quantization and its two layer-splitting variants (LLM.int8() outliers, SplitQuant)."""

from __future__ import annotations

import math
from typing import Any

import torch

from measure.compress.methods.pruning import lowest_scores_mask
from measure.compress.methods.uniform import SCALE_BITS, IntegerGrid, grid_bits_per_weight, grid_quantize
from theory.accounting import Convention

OUTLIER_BITS = 8
OUTLIER_KEPT_BITS = 16
SPLIT_CLUSTERS = 3
OUTLIER_GRID = IntegerGrid(OUTLIER_BITS, "signed")


def rtn_quantize(
    weight: torch.Tensor,
    gram: torch.Tensor | None = None,
    *,
    bits: int,
    group: str | int,
    symmetric: bool,
    clip: str,
) -> torch.Tensor:
    """Round-to-nearest onto a b-bit integer grid, one scale per tensor / output channel / group of g inputs.

    ``ŵ = s·(clamp(round(w/s) + z) − z)`` (Jacob et al. 2018, arXiv 1712.05877, Eq. 1), scales from
    min-max or from the MSE clipping search of :mod:`measure.compress.methods.uniform`. Grid:
    ``symmetric`` → the GPTQ convention (codes ``0…2^b − 1``, ``z = 2^(b−1)``, ``s = 2·max|w|/(2^b − 1)``);
    otherwise min-max with an integer zero point (:class:`~measure.compress.methods.uniform.IntegerGrid`).
    """
    return grid_quantize(weight, IntegerGrid.of(bits, symmetric), group, clip)


def outlier_columns(gram: torch.Tensor, fraction: float) -> torch.Tensor:
    """Boolean mask of the ``round(f·in)`` input columns of largest activation norm ``‖X_j‖₂ = √H_jj``."""
    norms = torch.diagonal(gram).clamp_min(0).sqrt()
    return lowest_scores_mask(norms, norms.numel() - round(fraction * norms.numel()))


def int8_outlier_quantize(weight: torch.Tensor, gram: torch.Tensor, *, outlier_fraction: float) -> torch.Tensor:
    """LLM.int8()-style split (Dettmers et al. 2022, arXiv 2208.07339, mixed-precision decomposition).

    Input columns whose activation norm ``‖X_j‖₂`` exceeds the threshold — here the ``1 − f`` quantile
    of the column norms, so ``round(f·in)`` columns — stay in 16 bits; the rest are 8-bit symmetric
    with one absmax scale per output row (vector-wise quantization): the ``"signed"`` grid of
    :mod:`measure.compress.methods.uniform`, ``s = max|w_row|/127``, codes ``−127…127``.
    """
    regular = ~outlier_columns(gram, outlier_fraction)
    result = weight.clone()
    if regular.any():
        result[:, regular] = grid_quantize(weight[:, regular], OUTLIER_GRID, "channel", "minmax")
    return result


def int8_outlier_bits_per_weight(params: dict, shape: tuple[int, int], convention: Convention) -> float:
    """``[out·(in−k)·8 + out·16 (row scales) + out·k·16 + k·⌈log2 in⌉ (column indices)] / (out·in)``."""
    rows, columns = shape
    kept = round(params["outlier_fraction"] * columns)
    total = (
        rows * (columns - kept) * OUTLIER_BITS
        + rows * SCALE_BITS
        + rows * kept * OUTLIER_KEPT_BITS
        + kept * math.ceil(math.log2(columns))
    )
    return total / (rows * columns)


def int8_outlier_element_bits(params: dict, shape: tuple[int, int]) -> float:
    """Average bits of one stored value: ``(8·(in − k) + 16·k) / in``."""
    kept = round(params["outlier_fraction"] * shape[1])
    return (OUTLIER_BITS * (shape[1] - kept) + OUTLIER_KEPT_BITS * kept) / shape[1]


def kmeans_1d_labels(values: torch.Tensor, clusters: int, iterations: int = 100) -> torch.Tensor:
    """Lloyd's k-means on scalars; labels ordered by value (0 = lowest cluster).

    Centroids start at the ``(c + ½)/clusters`` quantiles. In one dimension the nearest centroid is
    decided by the midpoints between sorted centroids, and Lloyd's updates keep them sorted.
    """
    flat = values.reshape(-1)
    ranks = ((torch.arange(clusters, dtype=torch.float64) + 0.5) / clusters * flat.numel()).long()
    centroids = flat.sort().values[ranks]
    labels = torch.bucketize(flat, (centroids[1:] + centroids[:-1]) / 2)
    for _ in range(iterations):
        counts = torch.bincount(labels, minlength=clusters)
        sums = torch.zeros(clusters, dtype=flat.dtype).index_add_(0, labels, flat)
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
        updated = torch.bucketize(flat, (centroids[1:] + centroids[:-1]) / 2)
        if torch.equal(updated, labels):
            break
        labels = updated
    return labels.reshape(values.shape)


def splitquant_quantize(weight: torch.Tensor, gram: torch.Tensor | None = None, **grid: Any) -> torch.Tensor:
    """SplitQuant (Song & Lin 2025, arXiv 2501.12428): k-means splits W into lower / middle / upper clusters.

    ``W = W_low + W_mid + W_up`` with each part holding one cluster's weights and zeros elsewhere; each
    part is quantized on its own (its own scales) by :func:`rtn_quantize` with the grid options ``grid``
    (bits, group, symmetric, clip), and the layer becomes three layers whose outputs sum.
    """
    labels = kmeans_1d_labels(weight, SPLIT_CLUSTERS)
    parts = (torch.where(labels == cluster, weight, 0.0) for cluster in range(SPLIT_CLUSTERS))
    return sum(rtn_quantize(part, **grid) for part in parts)


def splitquant_bits_per_weight(params: dict, shape: tuple[int, int], convention: Convention) -> float:
    """Three dense b-bit layers, each with its own scales: ``3·(b + scale overhead)``; no cluster index."""
    return SPLIT_CLUSTERS * grid_bits_per_weight(params, shape, convention)
