"""Uniform integer grids with one scale (and zero point) per group: fitting, clipping search and rounding.

A b-bit grid stores integer codes ``q ∈ [q_min, q_max]`` and dequantizes as ``ŵ = s·(q − z)``. Three grids,
each under its own name (:data:`GRID_KINDS`); with ``M = c·max|w|`` over the group and ``c`` the clipping
ratio:

* ``"symmetric"`` — the convention of GPTQ's reference quantizer (``quant.py``, ``sym=True``), AutoGPTQ /
  GPTQModel and compressed-tensors: codes ``0…2^b − 1``, zero point ``z = 2^(b−1)``,
  ``s = 2M/(2^b − 1)``. The levels are ``s·{−2^(b−1), …, 2^(b−1) − 1}``; ``±M`` fall on the half-codes
  ``±(2^(b−1) − ½)``, so every value is within ``s/2`` of a level: ``+M`` saturates onto the top code, and
  ``−M`` is a tie between the two lowest codes that round half to even sends to the bottom one when the
  division is exact — the bottom code holds at most the group's negative absmax. Against the signed grid below,
  the step is ``2M/(2^b − 1)`` instead of ``M/(2^(b−1) − 1)``: 2/3 instead of 1 at 2 bits, in units of M.
  This is the default grid of ``rtn``, ``gptq`` and ``awq``. (GPTQ's own code takes ``s = max/(2^b − 1)``
  when a group has no negative value; here ``s`` is always from ``max|w|``, as in compressed-tensors.)
* ``"asymmetric"`` — min-max with an integer zero point: the range ``[min(w, 0), max(w, 0)]`` (zero always
  representable, as in GPTQ's quantizer) scaled by c maps onto codes ``0…2^b − 1``,
  ``s = c·(max − min)/(2^b − 1)``, ``z = −round(c·min / s)``.
* ``"signed"`` — the signed INT grid of Kuzmin et al. (NeurIPS 2023, Sec. 2; :func:`theory.formats.int_grid`)
  and the absmax quantizer of LLM.int8(): codes ``−2^(b−1)…2^(b−1) − 1``, ``z = 0``,
  ``s = M/(2^(b−1) − 1)``; the code ``−2^(b−1)`` is reached only when ``c < 1`` clips the range.

The clipping ratio is ``c = 1`` for min-max, or, for ``clip="mse"``, the ratio minimizing the group's
squared rounding error over :data:`CLIP_RATIOS` (100 points in [0.2, 1], the grid search of GPTQ's
``--mse`` quantizer option and AWQ's clipping search; ties keep the largest ratio, so the MSE choice
never does worse than min-max).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from theory.accounting import Convention, integer_bits_per_weight
from theory.errors import choose
from theory.formats import int_grid

CLIP_RATIOS = torch.linspace(1.0, 0.2, 100, dtype=torch.float64)
SCALE_BITS = 16


GRID_KINDS = ("symmetric", "asymmetric", "signed")
"""The integer grids of the module docstring."""


@dataclass(frozen=True)
class IntegerGrid:
    """A b-bit integer grid of one of the kinds of :data:`GRID_KINDS` (module docstring)."""

    bits: int
    kind: str

    def __post_init__(self) -> None:
        choose("integer grid", self.kind, GRID_KINDS)

    @classmethod
    def of(cls, bits: int, symmetric: bool) -> IntegerGrid:
        """The grid of the methods' ``symmetric`` flag: ``"symmetric"`` (GPTQ convention) or ``"asymmetric"``."""
        return cls(bits, "symmetric" if symmetric else "asymmetric")

    @cached_property
    def code_range(self) -> tuple[int, int]:
        """``(q_min, q_max)``: the codes of :func:`theory.formats.int_grid` (signed, or unsigned ``0…2^b − 1``)."""
        codes = np.asarray(int_grid(self.bits, self.kind == "signed"))
        return int(codes.min()), int(codes.max())

    def fit(self, groups: torch.Tensor, ratio: float | torch.Tensor = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point per group (last dimension) at clipping ratio ``ratio``; shapes ``(..., 1)``."""
        q_min, q_max = self.code_range
        if self.kind == "asymmetric":
            low = ratio * groups.amin(dim=-1, keepdim=True).clamp_max(0)
            high = ratio * groups.amax(dim=-1, keepdim=True).clamp_min(0)
            scale = (high - low) / (q_max - q_min)
            zero = q_min - torch.round(low / torch.where(scale > 0, scale, 1.0))
        else:
            absmax = ratio * groups.abs().amax(dim=-1, keepdim=True)
            if self.kind == "symmetric":
                scale, zero = absmax / ((q_max - q_min) / 2), torch.full_like(absmax, 2 ** (self.bits - 1))
            else:
                scale, zero = absmax / q_max, torch.zeros_like(absmax)
        return torch.where(scale > 0, scale, 1.0), zero

    def round(
        self, values: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``s·(clamp(round(w/s) + z, q_min, q_max) − z)``: the nearest grid value, saturating at the ends.

        Written into ``out`` when given (it may be ``values`` itself), else into a new tensor.
        """
        q_min, q_max = self.code_range
        codes = torch.div(values, scale, out=out).round_().add_(zero).clamp_(q_min, q_max)
        return codes.sub_(zero).mul_(scale)

    def fit_clipped(self, groups: torch.Tensor, clip: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point per group; ``clip="mse"`` searches :data:`CLIP_RATIOS` per group."""
        best_scale, best_zero = self.fit(groups)
        if clip == "minmax":
            return best_scale, best_zero
        best_error = ((self.round(groups, best_scale, best_zero) - groups) ** 2).sum(dim=-1, keepdim=True)
        for ratio in CLIP_RATIOS[1:]:
            scale, zero = self.fit(groups, ratio)
            error = ((self.round(groups, scale, zero) - groups) ** 2).sum(dim=-1, keepdim=True)
            better = error < best_error
            best_scale = torch.where(better, scale, best_scale)
            best_zero = torch.where(better, zero, best_zero)
            best_error = torch.where(better, error, best_error)
        return best_scale, best_zero


def grouped(weight: torch.Tensor, group: str | int) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """View of ``weight`` as ``(rows, groups, group_size)`` and the inverse map.

    ``"tensor"`` → one group of all weights; ``"channel"`` → one group per output row; an integer g →
    groups of g consecutive input columns per row, the last one zero-padded when g does not divide
    in_features (zeros never move a range that always contains 0, and round to 0 exactly).
    """
    rows, columns = weight.shape
    if group == "tensor":
        return weight.reshape(1, 1, -1), lambda groups: groups.reshape(rows, columns)
    if group == "channel":
        return weight.reshape(rows, 1, columns), lambda groups: groups.reshape(rows, columns)
    padded = -(-columns // group) * group
    groups = torch.nn.functional.pad(weight, (0, padded - columns)).reshape(rows, padded // group, group)
    return groups, lambda groups: groups.reshape(rows, padded)[:, :columns]


def group_count(shape: tuple[int, int], group: str | int) -> int:
    """Number of scale groups of an ``out × in`` weight: 1, out, or ``out·ceil(in/g)``."""
    rows, columns = shape
    if group == "tensor":
        return 1
    if group == "channel":
        return rows
    return rows * -(-columns // group)


def grid_bits_per_weight(params: dict, shape: tuple[int, int], convention: Convention) -> float:
    """``b + (16 + z)·groups/(out·in)``: fp16 scale per group, b-bit zero point when asymmetric."""
    zero_point_bits = 0 if params["symmetric"] else params["bits"]
    weights_per_group = shape[0] * shape[1] / group_count(shape, params["group"])
    return integer_bits_per_weight(params["bits"], weights_per_group, SCALE_BITS, zero_point_bits)


def grid_quantize(weight: torch.Tensor, grid: IntegerGrid, group: str | int, clip: str) -> torch.Tensor:
    """Round-to-nearest onto ``grid`` (module docstring) with one fitted scale (and zero point) per group."""
    groups, restore = grouped(weight, group)
    scale, zero = grid.fit_clipped(groups, clip)
    return restore(grid.round(groups, scale, zero))
