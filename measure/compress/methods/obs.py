"""The Optimal-Brain-Surgeon column sweep shared by GPTQ and SparseGPT.

Columns are fixed one at a time (in the order of the weight's columns); after column i is set to
its target q, the not-yet-fixed columns absorb the error (Frantar et al. 2022, arXiv 2210.17323,
Eq. 2–3, in the Cholesky form of their Sec. 4, "Step 3: Cholesky reformulation"):

    δ = (w_i − q_i) / U_ii,     W[:, j] −= δ · U_ij   for j > i,

where U is the upper Cholesky factor of ``(H + λI)⁻¹ = UᵀU`` with damping ``λ = percdamp·mean(diag H)``.
Updates are applied eagerly inside a block of ``block_size`` columns and lazily, as one matrix product,
to the columns after it ("Step 2: lazy batch-updates").

What a column's target is — rounding to a grid, zeroing by a mask, or both — is a :class:`ColumnRule`.
"""

from __future__ import annotations

from typing import Protocol

import torch

from theory.errors import PvqError


def inverse_gram_factor(gram: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor U of ``(H + λI)⁻¹``, ``λ = percdamp·mean(diag H)``; dead inputs get ``H_jj = 1``.

    A dead input (``H_jj = 0``, never active on calibration data) is decoupled from the others, so its
    weights are fixed without moving any other column.
    """
    damped = gram.clone()
    diagonal = torch.diagonal(damped)
    diagonal[diagonal == 0] = 1.0
    diagonal += percdamp * diagonal.mean()
    factor, info = torch.linalg.cholesky_ex(damped)
    if info:
        raise PvqError(
            f"the damped Gram matrix is not positive definite (percdamp={percdamp:g}); increase percdamp "
            "or capture more calibration tokens"
        )
    return torch.linalg.cholesky(torch.cholesky_inverse(factor), upper=True)


class ColumnRule(Protocol):
    """What the sweep sets each column to."""

    def begin_block(self, sweep: ObsSweep) -> None:
        """Called when the sweep enters the block ``sweep.start:sweep.stop`` (``sweep.block`` is up to date)."""

    def target(self, sweep: ObsSweep, column: int) -> torch.Tensor:
        """The value ``q`` (one per output row) that column ``column`` is fixed to."""


class ObsSweep:
    """State of one blocked OBS column sweep over ``weight`` (``out × in``, columns in processing order)."""

    def __init__(self, weight: torch.Tensor, factor: torch.Tensor, block_size: int) -> None:
        self.weight = weight.clone()
        self.factor = factor
        self.block_size = block_size
        self.start = self.stop = 0
        self.block = self.weight[:, :0]
        self.errors = self.weight[:, :0]

    def current(self, columns: torch.Tensor) -> torch.Tensor:
        """Up-to-date values of not-yet-fixed ``columns`` (block updates included, lazy updates applied)."""
        values = torch.empty(self.weight.shape[0], columns.numel(), dtype=self.weight.dtype)
        inside = columns < self.stop
        values[:, inside] = self.block[:, columns[inside] - self.start]
        outside = columns[~inside]
        values[:, ~inside] = self.weight[:, outside] - self.errors @ self.factor[self.start : self.stop, outside]
        return values

    def run(self, rule: ColumnRule) -> torch.Tensor:
        """Fix every column to ``rule.target`` with OBS error feedback; returns the fixed weight."""
        result = torch.empty_like(self.weight)
        columns = self.weight.shape[1]
        for start in range(0, columns, self.block_size):
            self.start, self.stop = start, min(start + self.block_size, columns)
            self.block = self.weight[:, self.start : self.stop].clone()
            self.errors = torch.zeros_like(self.block)
            local_factor = self.factor[self.start : self.stop, self.start : self.stop]
            rule.begin_block(self)
            for offset in range(self.stop - self.start):
                target = rule.target(self, self.start + offset)
                error = (self.block[:, offset] - target) / local_factor[offset, offset]
                self.block[:, offset:] -= error[:, None] * local_factor[offset, offset:][None, :]
                self.errors[:, offset] = error
                result[:, self.start + offset] = target
            self.weight[:, self.stop :] -= self.errors @ self.factor[self.start : self.stop, self.stop :]
        return result
