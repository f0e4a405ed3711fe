"""Formats vs independent decodings and brute-force reference quantizers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from theory import accounting
from theory.errors import PvqError
from theory.formats import (
    FORMATS,
    MX_ELEMENTS,
    fp_values,
    get_format,
    int_grid,
    mx_quantize,
    nf4_quantize,
    nf4_values,
    round_to_values,
    ternary_quantize,
)

# bitsandbytes' published NF4 table (functional.get_4bit_type("nf4"))
PUBLISHED_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                 -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0]


def decode_codes(e: int, m: int, reserved: str) -> list[float]:
    """Decode every bit pattern of an OCP float format one code at a time (independent of fp_values)."""
    bias = 2 ** (e - 1) - 1
    values = []
    for code in range(2 ** (1 + e + m)):
        sign = -1.0 if code >> (e + m) else 1.0
        exponent = (code >> m) & (2**e - 1)
        mantissa = code & (2**m - 1)
        if reserved == "ieee" and exponent == 2**e - 1:
            continue
        if reserved == "top-code-nan" and exponent == 2**e - 1 and mantissa == 2**m - 1:
            continue
        if exponent == 0:
            values.append(sign * mantissa / 2**m * 2.0 ** (1 - bias))
        else:
            values.append(sign * (1 + mantissa / 2**m) * 2.0 ** (exponent - bias))
    return sorted(set(values))


@pytest.mark.parametrize("e, m, reserved, largest", [
    (4, 3, "top-code-nan", 448.0), (5, 2, "ieee", 57344.0), (3, 2, "none", 28.0), (2, 3, "none", 7.5),
    (2, 1, "none", 6.0),
])
def test_fp_values_match_bitwise_decoding(e, m, reserved, largest):
    values = fp_values(e, m)
    assert values.max() == largest and values.min() == -largest
    assert values.tolist() == decode_codes(e, m, reserved)


def test_nf4_matches_published_table():
    assert nf4_values() == pytest.approx(PUBLISHED_NF4, abs=2e-7)


def test_int_grid_is_the_paper_grid():
    assert int_grid(4).tolist() == list(range(-8, 8))
    assert int_grid(3, symmetric=False).tolist() == list(range(8))
    assert int_grid(16).tolist() == list(range(-(2**15), 2**15))
    with pytest.raises(PvqError, match=r"integer in 2\.\.16"):
        int_grid(17)
    with pytest.raises(PvqError, match=r"integer in 2\.\.16"):
        int_grid(1)


def test_round_to_values_is_nearest_and_saturating():
    rng = np.random.default_rng(0)
    values = np.sort(rng.normal(size=23))
    x = rng.normal(scale=2.0, size=5000)
    brute = values[np.argmin(np.abs(x[:, None] - values[None, :]), axis=1)]
    assert np.array_equal(round_to_values(x, values), brute)


def test_round_to_values_ties_to_even():
    assert np.array_equal(round_to_values(np.arange(-9.5, 9.0), int_grid(4)),
                          np.clip(np.round(np.arange(-9.5, 9.0)), -8, 7))
    fp4 = fp_values(2, 1)
    # midpoints of E2M1 go to the code with even mantissa: 0.25->0, 0.75->1, 1.25->1, 2.5->2, 3.5->4, 5->4
    ties = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    assert round_to_values(ties, fp4).tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]
    assert round_to_values(-ties, fp4).tolist() == [-0.0, -1.0, -1.0, -2.0, -2.0, -4.0, -4.0]


def test_round_to_values_keeps_shape_and_float32():
    x = np.random.default_rng(1).normal(size=(3, 4, 5)).astype(np.float32)
    out = round_to_values(x, fp_values(4, 3))
    assert out.shape == x.shape and out.dtype == np.float32


def reference_mx(x: np.ndarray, element: str, block_size: int = 32) -> np.ndarray:
    """Per-block loop over rows of a 2-D array, straight from OCP MX v1.0 §6.3."""
    spec = MX_ELEMENTS[element]
    emax = math.floor(math.log2(float(spec.values.max())))
    out = np.empty_like(x, dtype=np.float64)
    for row in range(x.shape[0]):
        for start in range(0, x.shape[1], block_size):
            block = x[row, start:start + block_size].astype(np.float64)
            amax = float(np.abs(block).max())
            if amax == 0:
                out[row, start:start + block_size] = 0.0
                continue
            scale = 2.0 ** (math.floor(math.log2(amax)) - emax)
            scaled = np.clip(block / scale, spec.values.min(), spec.values.max())
            nearest = spec.values[np.argmin(np.abs(scaled[:, None] - spec.values[None, :]), axis=1)]
            out[row, start:start + block_size] = nearest * scale
    return out


@pytest.mark.parametrize("element", list(MX_ELEMENTS))
def test_mx_quantize_matches_reference(element):
    rng = np.random.default_rng(2)
    x = rng.standard_t(4, size=(6, 70)) * 0.02  # 70 = two full blocks and a padded tail
    x[0, :32] = 0.0
    result = mx_quantize(x, element)
    assert np.allclose(result, reference_mx(x, element), rtol=0, atol=0)
    assert np.allclose(mx_quantize(x.T, element, axis=0), result.T, rtol=0, atol=0)


def test_mx_scale_is_power_of_two_and_elements_representable():
    x = np.random.default_rng(3).normal(size=(4, 64)).astype(np.float32)
    result = mx_quantize(x, "fp4_e2m1")
    assert result.dtype == np.float32
    for block_in, block_out in zip(x.reshape(-1, 32), result.reshape(-1, 32), strict=True):
        scale = 2.0 ** (math.floor(math.log2(np.abs(block_in).max())) - 2)
        assert set((block_out / scale).tolist()) <= set(fp_values(2, 1).tolist())


def test_nf4_quantize_matches_blockwise_absmax_loop():
    x = np.random.default_rng(4).normal(size=(3, 128))
    levels = np.array(PUBLISHED_NF4)
    expected = np.empty_like(x)
    for row in range(3):
        for start in (0, 64):
            block = x[row, start:start + 64]
            absmax = np.abs(block).max()
            nearest = levels[np.argmin(np.abs(block[:, None] / absmax - levels), axis=1)]
            expected[row, start:start + 64] = nearest * absmax
    assert np.allclose(nf4_quantize(x), expected, atol=2e-7 * np.abs(x).max())


def test_ternary_is_absmean():
    x = np.random.default_rng(5).laplace(size=(50, 20))
    gamma = np.abs(x).mean()
    expected = np.clip(np.round(x / gamma), -1, 1) * gamma
    assert np.allclose(ternary_quantize(x), expected)
    assert np.array_equal(ternary_quantize(np.zeros(4)), np.zeros(4))


def test_registry_bits_per_weight_come_from_accounting():
    assert get_format("int4").bits_per_weight == 4.0
    assert get_format("mxfp4").bits_per_weight == accounting.mx_bits_per_weight(4) == 4.25
    assert get_format("mxfp6_e2m3").bits_per_weight == 6.25
    assert get_format("mxint8").bits_per_weight == 8.25
    assert get_format("nf4").bits_per_weight == pytest.approx(4.127, abs=1e-3)
    assert get_format("ternary").bits_per_weight == pytest.approx(math.log2(3))
    assert {fmt.family for fmt in FORMATS.values()} == {"int", "int-asym", "fp", "nf4", "mx", "ternary"}
    with pytest.raises(PvqError, match="unknown format"):
        get_format("int9")
