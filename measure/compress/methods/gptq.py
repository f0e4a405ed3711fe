"""GPTQ (Frantar et al. 2022, arXiv 2210.17323): integer-grid quantization with OBS error feedback.

Columns are rounded one at a time by the sweep of :mod:`measure.compress.methods.obs` (blocks of 128 columns,
lazy batch updates, Cholesky of the damped inverse Gram). Grid parameters are fitted per group with
:class:`~measure.compress.methods.uniform.IntegerGrid` when the sweep reaches the group's first column, on the
group's then-current weights, all updates included (the reference code fits on the lazily updated W,
which misses the in-block updates of groups that start inside a block).

``act_order`` processes columns by decreasing ``H_jj`` ("act-order" of the GPTQ repository) and undoes
the permutation afterwards. Groups stay groups of g consecutive *original* columns, so storage is the
same as without act-order (no group index per column): a group's grid is fitted when its first member in
processing order is reached, on all of its members' current values — none of them fixed yet.

``keep`` (a keep-mask, for prune-then-quantize) fixes pruned weights at exactly 0 while the kept ones
are quantized: the joint sparsify-and-quantize sweep of SparseGPT (Frantar & Alistarh 2023,
arXiv 2301.00774) with the mask given.
"""

from __future__ import annotations

import torch

from measure.compress.methods.obs import ObsSweep, inverse_gram_factor
from measure.compress.methods.uniform import IntegerGrid


class GptqRule:
    """Column target of GPTQ: the current column rounded onto its group's grid (masked weights at 0)."""

    def __init__(
        self,
        grid: IntegerGrid,
        clip: str,
        groups: list[torch.Tensor],
        shared_scale: bool,
        keep: torch.Tensor | None,
    ) -> None:
        self.grid = grid
        self.clip = clip
        self.groups = groups
        self.shared_scale = shared_scale
        self.keep = keep
        self.group_of = [0] * sum(group.numel() for group in groups)
        for index, group in enumerate(groups):
            for column in group.tolist():
                self.group_of[column] = index
        self.fitted: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def begin_block(self, sweep: ObsSweep) -> None:
        """Nothing to prepare: grids are fitted per group, on demand."""

    def target(self, sweep: ObsSweep, column: int, out: torch.Tensor) -> None:
        """The column rounded onto its group's grid, fitting that grid first if the group is new."""
        index = self.group_of[column]
        if index not in self.fitted:
            self.fitted[index] = self._fit(sweep, self.groups[index])
        scale, zero = self.fitted[index]
        values = sweep.column(column)
        if self.keep is not None:
            values = torch.mul(values, self.keep[:, column], out=out)
        self.grid.round(values, scale, zero, out=out)

    def _fit(self, sweep: ObsSweep, columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point (one per output row) of the group ``columns``, on their current values."""
        values = self._masked(sweep.current(columns), columns)
        if self.shared_scale:
            scale, zero = self.grid.fit_clipped(values.reshape(1, -1), self.clip)
            return scale[0].expand(values.shape[0]), zero[0].expand(values.shape[0])
        scale, zero = self.grid.fit_clipped(values, self.clip)
        return scale[:, 0], zero[:, 0]

    def _masked(self, values: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        return values if self.keep is None else values * self.keep[:, columns]


def gptq_quantize(
    weight: torch.Tensor,
    gram: torch.Tensor,
    *,
    bits: int,
    group: str | int,
    symmetric: bool,
    clip: str,
    act_order: bool,
    block_size: int = 128,
    percdamp: float = 0.01,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """GPTQ Algorithm 1 (arXiv 2210.17323): minimize ``tr(ΔW H ΔWᵀ)`` column by column on a b-bit grid.

    Same grid, granularity and clipping options as :func:`measure.compress.methods.quantization.rtn_quantize`:
    ``symmetric`` is the grid of GPTQ's reference quantizer (codes ``0…2^b − 1``, ``z = 2^(b−1)``,
    ``s = 2·max|w|/(2^b − 1)``), otherwise min-max with an integer zero point.
    """
    columns = weight.shape[1]
    order = (
        torch.argsort(torch.diagonal(gram), descending=True, stable=True) if act_order else torch.arange(columns)
    )
    position = torch.argsort(order)
    groups = [position[chunk] for chunk in _column_groups(columns, group)]
    if act_order:
        weight, gram = weight[:, order], gram[order][:, order]
        keep = None if keep is None else keep[:, order]
    rule = GptqRule(IntegerGrid.of(bits, symmetric), clip, groups, group == "tensor", keep)
    fixed = ObsSweep(weight, inverse_gram_factor(gram, percdamp), block_size).run(rule)
    return fixed[:, position] if act_order else fixed


def _column_groups(columns: int, group: str | int) -> list[torch.Tensor]:
    """Original input columns of each scale group: all of them (tensor, channel) or runs of g."""
    everything = torch.arange(columns)
    return [everything] if group in ("tensor", "channel") else list(everything.split(group))
