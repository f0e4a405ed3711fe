"""SparseGPT (Frantar & Alistarh 2023, arXiv 2301.00774): pruning with OBS reconstruction of the kept weights.

The sweep of :mod:`measure.compress.methods.obs` zeroes the pruned weights column by column and lets the later
columns absorb the error. The mask is chosen adaptively (their "Adaptive Mask Selection"):
when the sweep enters a block of ``block_size`` columns, the ``k`` weights of lowest OBS saliency
``w_ij² / U_jj²`` in the block (U: Cholesky factor of the damped inverse Gram) are pruned, on the
block's current, already-updated weights. Per-block counts ``round(p·out·stop) − round(p·out·start)``
add up to exactly ``round(p·out·in)``. For N:M, the pattern is chosen on every M columns as the sweep
reaches them (their extension to semi-structured N:M sparsity).
"""

from __future__ import annotations

import torch

from measure.compress.methods.obs import ObsSweep, inverse_gram_factor
from measure.compress.methods.pruning import lowest_scores_mask, nm_keep_mask, pruned_count, resolve_pattern
from theory.errors import PvqError


class SparseGptRule:
    """Column target of SparseGPT: the current column with its pruned weights set to 0."""

    def __init__(self, sparsity: float, nm: tuple[int, int] | None) -> None:
        self.sparsity = sparsity
        self.nm = nm
        self.keep = torch.ones(0, 0, dtype=torch.bool)

    def begin_block(self, sweep: ObsSweep) -> None:
        """Unstructured: prune the block's lowest-saliency weights, its share of ``round(p·out·in)``."""
        rows = sweep.block.shape[0]
        self.keep = torch.ones_like(sweep.block, dtype=torch.bool)
        if self.nm is None:
            count = pruned_count(rows * sweep.stop, self.sparsity) - pruned_count(
                rows * sweep.start, self.sparsity
            )
            self.keep = lowest_scores_mask(self._saliency(sweep, sweep.start, sweep.stop).reshape(-1), count)
            self.keep = self.keep.reshape(sweep.block.shape)

    def target(self, sweep: ObsSweep, column: int, out: torch.Tensor) -> None:
        """The current column, masked; N:M picks the pattern of the next M columns on reaching them."""
        offset = column - sweep.start
        if self.nm is not None and offset % self.nm[1] == 0:
            stop = offset + self.nm[1]
            saliency = self._saliency(sweep, column, sweep.start + stop)
            self.keep[:, offset:stop] = nm_keep_mask(saliency, *self.nm)
        torch.mul(sweep.column(column), self.keep[:, offset], out=out)

    @staticmethod
    def _saliency(sweep: ObsSweep, start: int, stop: int) -> torch.Tensor:
        """OBS saliency ``w² / U_jj²`` of the current weights in columns ``start:stop`` (arXiv 2301.00774)."""
        diagonal = torch.diagonal(sweep.factor)[start:stop]
        return sweep.block[:, start - sweep.start : stop - sweep.start] ** 2 / diagonal[None, :] ** 2


def sparsegpt_prune(
    weight: torch.Tensor,
    gram: torch.Tensor,
    *,
    sparsity: float | None = None,
    nm: tuple[int, int] | None = None,
    block_size: int = 128,
    percdamp: float = 0.01,
) -> torch.Tensor:
    """SparseGPT Algorithm 1: prune to ``round(p·out·in)`` zeros (or N:M) and update the kept weights."""
    target = resolve_pattern(sparsity, nm)
    if nm is not None and (block_size % nm[1] or weight.shape[1] % nm[1]):
        raise PvqError(f"N:M {nm[0]}:{nm[1]} needs block_size and in_features divisible by {nm[1]}")
    factor = inverse_gram_factor(gram, percdamp)
    return ObsSweep(weight, factor, block_size).run(SparseGptRule(target, nm))
