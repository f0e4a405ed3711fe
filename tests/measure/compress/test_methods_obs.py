"""The OBS column sweep (GPTQ, SparseGPT) against a per-column reference written out in the weight's own layout.

``per_column_sweep`` is the blocked Cholesky sweep of Frantar et al. (arXiv 2210.17323, Sec. 4) one column at a
time on the ``out × in`` weight, every update a fresh tensor: δ = (w_i − q_i)/U_ii, then ``w_j −= δ·U_ij`` for the
block's j ≥ i, and the later blocks' columns once per block as ``errors @ U``. It forms the same products, sums and
quotients in the same order as :class:`measure.compress.methods.obs.ObsSweep`, so the two agree bit for bit.
``per_column_gptq`` and ``per_column_sparsegpt`` restate the two methods' column targets on top of it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from method_toys import random_layer

from measure.compress.methods.gptq import gptq_quantize
from measure.compress.methods.obs import inverse_gram_factor
from measure.compress.methods.pruning import lowest_scores_mask, nm_keep_mask, pruned_count
from measure.compress.methods.sparsegpt import sparsegpt_prune
from measure.compress.methods.uniform import IntegerGrid

Current = Callable[[torch.Tensor], torch.Tensor]
BeginBlock = Callable[[int, int, torch.Tensor], None]
Target = Callable[[int, int, torch.Tensor, Current], torch.Tensor]


def per_column_sweep(
    weight: torch.Tensor, factor: torch.Tensor, block_size: int, begin_block: BeginBlock, target: Target
) -> torch.Tensor:
    """Fix columns left to right to ``target(column, start, block, current)`` with OBS error feedback.

    ``begin_block(start, stop, block)`` sees each block of ``block_size`` columns on entry; ``current(columns)``
    gives the up-to-date values of not-yet-fixed columns (the block's own, or the pending ones minus the lazy
    update of the block's errors so far).
    """
    weight = weight.clone()
    fixed = torch.empty_like(weight)
    columns = weight.shape[1]
    for start in range(0, columns, block_size):
        stop = min(start + block_size, columns)
        block = weight[:, start:stop].clone()
        errors = torch.zeros_like(block)
        local = factor[start:stop, start:stop]

        def current(wanted: torch.Tensor, start=start, stop=stop, block=block, errors=errors) -> torch.Tensor:
            values = torch.empty(weight.shape[0], wanted.numel(), dtype=weight.dtype)
            inside = wanted < stop
            values[:, inside] = block[:, wanted[inside] - start]
            outside = wanted[~inside]
            values[:, ~inside] = weight[:, outside] - errors @ factor[start:stop, outside]
            return values

        begin_block(start, stop, block)
        for offset in range(stop - start):
            fixed[:, start + offset] = target(start + offset, start, block, current)
            error = (block[:, offset] - fixed[:, start + offset]) / local[offset, offset]
            block[:, offset:] -= error[:, None] * local[offset, offset:][None, :]
            errors[:, offset] = error
        weight[:, stop:] -= errors @ factor[start:stop, stop:]
    return fixed


def per_column_gptq(
    weight: torch.Tensor,
    gram: torch.Tensor,
    *,
    bits: int,
    group: str | int,
    symmetric: bool,
    act_order: bool,
    keep: torch.Tensor | None = None,
    clip: str = "minmax",
    block_size: int = 128,
    percdamp: float = 0.01,
) -> torch.Tensor:
    """GPTQ on :func:`per_column_sweep`: a group's grid fitted on its members' current values when the sweep
    reaches the first of them; each column rounded ``s·(clamp(round(w/s) + z, q_min, q_max) − z)``, masked at 0."""
    columns = weight.shape[1]
    order = torch.arange(columns)
    if act_order:
        order = torch.argsort(torch.diagonal(gram), descending=True, stable=True)
    position = torch.argsort(order)
    size = columns if group in ("tensor", "channel") else group
    keep = None if keep is None else keep[:, order]
    grid = IntegerGrid.of(bits, symmetric)
    q_min, q_max = grid.code_range
    fitted: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def target(column: int, start: int, block: torch.Tensor, current: Current) -> torch.Tensor:
        index = int(order[column]) // size
        if index not in fitted:
            members = position[index * size : (index + 1) * size]
            values = current(members) if keep is None else current(members) * keep[:, members]
            if group == "tensor":
                scale, zero = grid.fit_clipped(values.reshape(1, -1), clip)
                scale, zero = scale.expand(values.shape[0], 1), zero.expand(values.shape[0], 1)
            else:
                scale, zero = grid.fit_clipped(values, clip)
            fitted[index] = scale[:, 0], zero[:, 0]
        scale, zero = fitted[index]
        values = block[:, column - start] if keep is None else block[:, column - start] * keep[:, column]
        return scale * (torch.clamp(torch.round(values / scale) + zero, q_min, q_max) - zero)

    factor = inverse_gram_factor(gram[order][:, order], percdamp)
    return per_column_sweep(weight[:, order], factor, block_size, lambda *block: None, target)[:, position]


def per_column_sparsegpt(
    weight: torch.Tensor,
    gram: torch.Tensor,
    *,
    sparsity: float | None = None,
    nm: tuple[int, int] | None = None,
    block_size: int = 128,
    percdamp: float = 0.01,
) -> torch.Tensor:
    """SparseGPT on :func:`per_column_sweep`: per block, the block's share of ``round(p·out·in)`` lowest saliencies
    ``w²/U_jj²`` pruned on entry, or N:M chosen on every M columns as the sweep reaches them."""
    factor = inverse_gram_factor(gram, percdamp)
    diagonal = torch.diagonal(factor)
    mask = {}

    def begin_block(start: int, stop: int, block: torch.Tensor) -> None:
        mask["keep"] = torch.ones_like(block, dtype=torch.bool)
        if nm is None:
            rows = block.shape[0]
            count = pruned_count(rows * stop, sparsity) - pruned_count(rows * start, sparsity)
            saliency = block**2 / diagonal[None, start:stop] ** 2
            mask["keep"] = lowest_scores_mask(saliency.reshape(-1), count).reshape(block.shape)

    def target(column: int, start: int, block: torch.Tensor, current: Current) -> torch.Tensor:
        offset = column - start
        if nm is not None and offset % nm[1] == 0:
            span = slice(offset, offset + nm[1])
            saliency = block[:, span] ** 2 / diagonal[None, column : column + nm[1]] ** 2
            mask["keep"][:, span] = nm_keep_mask(saliency, *nm)
        return block[:, offset] * mask["keep"][:, offset]

    return per_column_sweep(weight, factor, block_size, begin_block, target)


def assert_same_bits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype == torch.float64
    assert torch.equal(actual.view(torch.int64), expected.view(torch.int64))


@pytest.fixture(scope="module")
def wide_layer():
    """48 × 300 float64 weights (two full blocks of 128 and a partial one), one dead input (H_jj = 0)."""
    weight, _, gram = random_layer(seed=3, rows=48, columns=300, tokens=600)
    gram[7, :] = gram[:, 7] = 0
    return weight.double(), gram


@pytest.mark.parametrize(
    ("bits", "group", "act_order", "block_size"),
    [(2, 128, False, 128), (3, 128, True, 128), (4, 32, False, 128), (4, 48, True, 128), (8, 128, False, 128),
     (3, "channel", True, 16), (4, "tensor", False, 128), (4, 32, True, 7)],
)  # fmt: skip
@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_equals_the_per_column_sweep_bit_for_bit(wide_layer, bits, group, act_order, block_size, symmetric):
    weight, gram = wide_layer
    params = {"bits": bits, "group": group, "symmetric": symmetric, "act_order": act_order, "clip": "minmax"}
    assert_same_bits(
        gptq_quantize(weight, gram, block_size=block_size, **params),
        per_column_gptq(weight, gram, block_size=block_size, **params),
    )


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_with_mse_clipping_and_a_keep_mask_equals_the_per_column_sweep_bit_for_bit(wide_layer, act_order):
    weight, gram = wide_layer
    keep = torch.rand(weight.shape, generator=torch.Generator().manual_seed(1)) > 0.5
    params = {"bits": 3, "group": 64, "symmetric": False, "act_order": act_order, "clip": "mse", "keep": keep}
    assert_same_bits(gptq_quantize(weight, gram, **params), per_column_gptq(weight, gram, **params))


@pytest.mark.parametrize(("sparsity", "nm", "block_size"), [(0.5, None, 128), (0.7, None, 16), (None, (2, 4), 128),
                                                            (None, (1, 4), 8)])  # fmt: skip
def test_sparsegpt_equals_the_per_column_sweep_bit_for_bit(wide_layer, sparsity, nm, block_size):
    weight, gram = wide_layer
    params = {"sparsity": sparsity, "nm": nm, "block_size": block_size}
    assert_same_bits(sparsegpt_prune(weight, gram, **params), per_column_sparsegpt(weight, gram, **params))


def test_the_sweep_runs_under_the_callers_thread_count_and_restores_it(wide_layer):
    """Two intra-op threads for the caller's matrix products; the per-column steps take one and give it back."""
    weight, gram = wide_layer
    params = {"bits": 4, "group": 48, "symmetric": True, "act_order": True, "clip": "minmax"}
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        quantized = gptq_quantize(weight, gram, **params)
        assert torch.get_num_threads() == 2
        expected = per_column_gptq(weight, gram, **params)
    finally:
        torch.set_num_threads(previous)
    assert_same_bits(quantized, expected)
