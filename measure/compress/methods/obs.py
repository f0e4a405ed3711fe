"""The Optimal-Brain-Surgeon column sweep shared by GPTQ and SparseGPT.

Columns are fixed one at a time (in the order of the weight's columns); after column i is set to
its target q, the not-yet-fixed columns absorb the error (Frantar et al. 2022, arXiv 2210.17323,
Eq. 2–3, in the Cholesky form of their Sec. 4, "Step 3: Cholesky reformulation"):

    δ = (w_i − q_i) / U_ii,     W[:, j] −= δ · U_ij   for j > i,

where U is the upper Cholesky factor of ``(H + λI)⁻¹ = UᵀU`` with damping ``λ = percdamp·mean(diag H)``.
Updates are applied eagerly inside a block of ``block_size`` columns and lazily, as one matrix product,
to the columns after it ("Step 2: lazy batch-updates").

The sweep holds the current block transposed (``width × out``), so a column is a contiguous row, and fixes a
column with a few in-place vector operations on buffers allocated once (no Python scalar read from a tensor per
column). Every product, difference and quotient above is still formed one by one in the order written — the
in-block updates as separate products and subtractions, the lazy update as the same ``errors @ U`` matrix
product — so the layout changes the speed, not a single bit of the result. The per-column steps run with one
intra-op thread (more threads only add synchronization to vectors of a few thousand elements, and stall whenever
another process holds the other core); the matrix products keep the caller's threads, as a BLAS's rounding may
depend on its thread count.

What a column's target is — rounding to a grid, zeroing by a mask, or both — is a :class:`ColumnRule`.
"""

from __future__ import annotations

from typing import Protocol

import torch

from measure.compress.parallel import torch_threads
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

    def target(self, sweep: ObsSweep, column: int, out: torch.Tensor) -> None:
        """Write into ``out`` the value ``q`` (one per output row) that column ``column`` is fixed to."""


class ObsSweep:
    """State of one blocked OBS column sweep over ``weight`` (``out × in``, columns in processing order).

    ``weight`` and ``factor`` share one dtype. ``weight`` holds the later blocks' columns with the lazy updates
    applied so far; the current block is kept as the rows of a ``width × out`` buffer, so that ``column(j)`` is a
    contiguous view of column j.
    """

    def __init__(self, weight: torch.Tensor, factor: torch.Tensor, block_size: int) -> None:
        self.factor = factor
        self.block_size = block_size
        self.start = self.stop = 0
        self.threads = torch.get_num_threads()  # of the matrix products
        self.weight = weight.clone()
        width = min(block_size, weight.shape[1])
        self._block = weight.new_empty(width, weight.shape[0])  # (width, out): current block, eager updates
        self._errors = torch.zeros_like(self._block)  # (width, out): δ of the block's fixed columns, else 0
        self._products = torch.empty_like(self._block)  # (width, out): scratch for the products δ·U_ij
        self._block_rows = self._block.unbind()
        self._error_rows = self._errors.unbind()
        self._views: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}

    @property
    def block(self) -> torch.Tensor:
        """The current block's columns ``start:stop`` (``out × width`` view), in-block updates included."""
        return self._block[: self.stop - self.start].T

    @property
    def errors(self) -> torch.Tensor:
        """``out × width``: δ of the block's columns fixed so far, 0 for the others."""
        return self._errors[: self.stop - self.start].T.contiguous()

    def column(self, column: int) -> torch.Tensor:
        """Up-to-date values of ``column`` of the current block (a contiguous view, one per output row)."""
        return self._block_rows[column - self.start]

    def current(self, columns: torch.Tensor) -> torch.Tensor:
        """Up-to-date values of not-yet-fixed ``columns`` (block updates included, lazy updates applied)."""
        values = self._block.new_empty(columns.numel(), self._block.shape[1])  # (columns, out)
        inside = columns < self.stop
        values[inside] = self._block[columns[inside] - self.start]
        outside = columns[~inside]
        if outside.numel():
            with torch_threads(self.threads):
                lazy = self.errors @ self.factor[self.start : self.stop, outside]
            values[~inside] = (self.weight[:, outside] - lazy).T
        return values.T.contiguous()

    def run(self, rule: ColumnRule) -> torch.Tensor:
        """Fix every column to ``rule.target`` with OBS error feedback; returns the fixed weight."""
        fixed = self.weight.new_empty(self.weight.shape[::-1])  # (in, out)
        fixed_columns = fixed.unbind()
        columns = fixed.shape[0]
        for start in range(0, columns, self.block_size):
            self.start, self.stop = start, min(start + self.block_size, columns)
            self._block[: self.stop - start].copy_(self.weight[:, start : self.stop].T)
            self._errors.zero_()
            with torch_threads(1):
                rule.begin_block(self)
                self._fix_block(rule, fixed_columns[start : self.stop])
            self.weight[:, self.stop :] -= self.errors @ self.factor[start : self.stop, self.stop :]
        return fixed.T.contiguous()

    def _fix_block(self, rule: ColumnRule, fixed_columns: tuple[torch.Tensor, ...]) -> None:
        """Fix the block's columns in turn: ``δ = (w_i − q_i)/U_ii``, then ``w_j −= δ·U_ij`` for its j > i."""
        local = self.factor[self.start : self.stop, self.start : self.stop, None].unbind()  # width × (width, 1)
        diagonal = torch.diagonal(self.factor)[self.start : self.stop].tolist()
        later, products = self._later_views(self.stop - self.start)
        for offset, target in enumerate(fixed_columns):
            rule.target(self, self.start + offset, target)
            error = self._error_rows[offset]
            torch.sub(self._block_rows[offset], target, out=error).div_(diagonal[offset])
            later[offset].sub_(torch.mul(local[offset][offset + 1 :], error, out=products[offset]))

    def _later_views(self, width: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per offset i of a block of ``width`` columns: its columns after i, and scratch of their shape."""
        if width not in self._views:
            self._views[width] = (
                [self._block[offset + 1 : width] for offset in range(width)],
                [self._products[: width - offset - 1] for offset in range(width)],
            )
        return self._views[width]
