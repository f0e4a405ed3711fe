"""Detect whether a model's weights already lie on a low-bit grid (e.g. dequantized GGUF).

A b-bit block quantizer (GGUF Q4_0/Q4_1/Q4_K, GPTQ with groups, ...) leaves at most 2^b distinct values
in every block of weights that share a scale. For each linear weight (out × in) and each candidate
block size B along the input dimension, count the distinct values in every block; the tensor is *on a
grid* of ``ceil(log2(max distinct))`` bits with block B when that maximum is at most B/2 (a float
weight has ≈B distinct values per block, so this test has no false positives on unquantized weights,
and it detects b ≤ log2(B) − 1). The smallest B that passes is reported. Formats whose sub-blocks are
shorter than the smallest candidate (e.g. Q6_K's 16-weight sub-blocks) are reported as "no grid".

Why it matters: a method that re-quantizes weights already on a 4-bit grid gets an unrealistically
small error at ≥ 4 bits. Every result records the detection, so no figure silently benefits from it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from measure.models.architecture import describe

BLOCK_SIZES = (32, 64, 128, 256)


@dataclass(frozen=True)
class TensorGrid:
    """Grid detection for one weight tensor."""

    name: str
    on_grid: bool
    bits: int | None
    block_size: int | None
    max_distinct: int


def distinct_per_block(weight: torch.Tensor, block_size: int) -> torch.Tensor:
    """Number of distinct values in each block of ``block_size`` consecutive inputs of every row."""
    rows, cols = weight.shape
    usable = cols - cols % block_size
    blocks = weight[:, :usable].reshape(rows, usable // block_size, block_size)
    ordered = blocks.sort(dim=-1).values
    return 1 + (ordered.diff(dim=-1) != 0).sum(dim=-1)


def detect_tensor_grid(name: str, weight: torch.Tensor) -> TensorGrid:
    """Detect the grid of one (out × in) weight; see the module docstring for the rule."""
    for block_size in BLOCK_SIZES:
        if weight.shape[1] < block_size:
            break
        max_distinct = int(distinct_per_block(weight, block_size).max())
        if max_distinct <= block_size // 2:
            return TensorGrid(name, True, max(1, math.ceil(math.log2(max_distinct))), block_size, max_distinct)
    narrowest = min(BLOCK_SIZES[0], weight.shape[1])  # a layer narrower than a block is one block per row
    return TensorGrid(name, False, None, None, int(distinct_per_block(weight, narrowest).max()))


@dataclass(frozen=True)
class GridReport:
    """Model-level summary of :func:`detect_tensor_grid` over all linear weights."""

    tensors: int
    on_grid: int
    bits: list[int]
    block_sizes: list[int]
    verdict: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def detect_model_grid(named_weights: Iterable[tuple[str, torch.Tensor]]) -> GridReport:
    """Summarize grid detection over ``(name, weight)`` pairs (the linear layers of a model)."""
    results = [detect_tensor_grid(name, weight.detach()) for name, weight in named_weights]
    hits = [r for r in results if r.on_grid]
    bits = sorted({r.bits for r in hits if r.bits is not None})
    blocks = sorted({r.block_size for r in hits if r.block_size is not None})
    if not hits:
        verdict = "no low-bit grid detected"
    else:
        verdict = (
            f"{len(hits)}/{len(results)} linear weights lie on a grid of "
            f"{'/'.join(map(str, bits))} bits per block of {'/'.join(map(str, blocks))} inputs "
            "(previously quantized weights)"
        )
    return GridReport(len(results), len(hits), bits, blocks, verdict)


def detect_linear_grid(model: torch.nn.Module) -> GridReport:
    """Grid detection over every linear layer of a model's decoder blocks (found by the walker)."""

    return detect_model_grid((ref.name, ref.weight()) for ref in describe(model).linears)
