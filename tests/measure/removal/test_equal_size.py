"""Equal size and reading curves at a size, against direct computations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from measure.removal.equal_size import (
    MASK_CONVENTIONS,
    DecoderSizes,
    bracketing_widths,
    equivalent_bits,
    mask_convention,
    row_mix,
    value_at,
)
from theory.accounting import binary_entropy_bits, sparse_bits_per_weight
from theory.errors import PvqError

SIZES = DecoderSizes(decoder=3_540_096, linear=3_538_944)
"""SmolLM2-135M's block: 3 538 944 linear weights and 1 152 norm weights."""


def test_decoder_and_linear_bits_are_inverse_and_count_the_16_bit_rest() -> None:
    for linear_bits in (2.0, 4.125, 11.73, 16.0):
        decoder = SIZES.decoder_bits(linear_bits)
        assert decoder == pytest.approx((linear_bits * 3_538_944 + 16 * 1_152) / 3_540_096, rel=1e-15)
        assert SIZES.linear_bits(decoder) == pytest.approx(linear_bits, rel=1e-14)
    assert SIZES.equal_size(0.0)["bits_per_linear_weight"] == pytest.approx(16.0)


@pytest.mark.parametrize("name", list(MASK_CONVENTIONS))
def test_equal_size_sparsity_costs_exactly_the_removal_bits(name: str) -> None:
    for fraction in (1 / 30, 4 / 30, 8 / 30):
        sparsity = SIZES.sparsity(fraction, name)
        linear = sparse_bits_per_weight(sparsity, mask_convention(name))
        assert SIZES.decoder_bits(linear) == pytest.approx(16 * (1 - fraction), abs=1e-9)


def test_entropy_coded_mask_costs_the_binary_entropy() -> None:
    sparsity = SIZES.sparsity(8 / 30, "entropy")
    direct = -(sparsity * math.log2(sparsity) + (1 - sparsity) * math.log2(1 - sparsity))
    assert binary_entropy_bits(sparsity) == pytest.approx(direct, rel=1e-14)
    assert sparsity > SIZES.sparsity(8 / 30, "free")


def test_an_unknown_mask_convention_is_one_clear_error() -> None:
    with pytest.raises(PvqError, match="unknown mask convention 'gzip'; choose one of free, entropy, bitmap"):
        mask_convention("gzip")


def _curve(bits: list[float], quality: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"bits_per_decoder_parameter": bits, "quality_db": quality})


def test_value_at_takes_a_point_or_interpolates_in_db_between_neighbours_one_bit_apart() -> None:
    curve = _curve([4.125, 3.125, 2.125, 8.125], [20.0, 14.0, 8.0, 45.0])
    assert value_at(curve, 3.125) == {"quality_db": 14.0, "low_bits": 3.125, "high_bits": 3.125,
                                      "interpolated": False}  # fmt: skip
    found = value_at(curve, 3.5)
    assert found["quality_db"] == pytest.approx(14.0 + 0.375 * 6.0)
    assert (found["low_bits"], found["high_bits"], found["interpolated"]) == (3.125, 4.125, True)
    assert value_at(curve, 6.0) is None  # 4.125 and 8.125 are four bits apart
    assert value_at(curve, 1.0) is None and value_at(curve, 9.0) is None


def test_equivalent_bits_inverts_the_curve_and_censors_outside_it() -> None:
    curve = _curve([2.125, 3.125, 4.125], [8.0, 14.0, 20.0])
    for size in np.linspace(2.125, 4.125, 9):
        bits, censored = equivalent_bits(curve, value_at(curve, size)["quality_db"])
        assert bits == pytest.approx(size) and censored == ""
    assert equivalent_bits(curve, 5.0) == (2.125, "below")
    assert equivalent_bits(curve, 30.0) == (4.125, "above")


def test_equivalent_bits_are_never_interpolated_across_a_gap_wider_than_one_bit() -> None:
    curve = _curve([2.125, 3.125, 4.125, 6.125, 8.125], [8.0, 14.0, 20.0, 32.0, 44.0])
    bits, censored = equivalent_bits(curve, 26.0)  # between 4.125 and 6.125: two bits apart
    assert np.isnan(bits) and censored == "gap"
    assert equivalent_bits(curve, 17.0) == (pytest.approx(3.625), "")


def test_bracketing_widths_are_consecutive_and_contain_the_target() -> None:
    costs = {2: 2.125, 3: 3.125, 4: 4.125, 8: 8.125}
    assert bracketing_widths(costs, 3.5) == (3, 4)
    assert bracketing_widths(costs, 4.125) == (3, 4)
    assert bracketing_widths(costs, 6.0) is None


def test_row_mix_reaches_the_target_as_closely_as_a_brute_force_over_small_layers() -> None:
    rows, low, high = [3, 2, 4], [4.0, 8.0, 6.0], [5.0, 10.0, 9.0]
    for target_fraction in np.linspace(0, 1, 11):
        base = sum(r * c for r, c in zip(rows, low, strict=True))
        span = sum(r * (h - c) for r, c, h in zip(rows, low, high, strict=True))
        target = base + target_fraction * span
        counts, gap = row_mix(rows, low, high, target)
        total = sum(k * h + (r - k) * c for k, r, c, h in zip(counts, rows, low, high, strict=True))
        assert gap == pytest.approx(total - target)
        best = min(abs(sum(k * h + (r - k) * c for k, r, c, h in zip(ks, rows, low, high, strict=True)) - target)
                   for ks in itertools.product(*(range(r + 1) for r in rows)))  # fmt: skip
        assert abs(gap) == pytest.approx(best, abs=1e-9)
    with pytest.raises(PvqError, match="outside what the two widths reach"):
        row_mix(rows, low, high, 1e6)
