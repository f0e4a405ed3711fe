"""Bits-per-weight accounting vs independent sources (gguf block sizes, QLoRA, OCP MX) and round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from theory.accounting import (
    KQUANT_BITS_PER_WEIGHT,
    Convention,
    check_bits,
    check_sparsity,
    equal_compression_sparsity,
    integer_bits_per_weight,
    kquant_bits_per_weight,
    mx_bits_per_weight,
    nf4_bits_per_weight,
    removal_bits_per_weight,
    sparse_bits_per_weight,
    ternary_bits_per_weight,
)
from theory.errors import PvqError


@pytest.mark.parametrize("name", list(KQUANT_BITS_PER_WEIGHT))
def test_gguf_types_match_the_gguf_block_layouts(name):
    block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[name]]
    assert kquant_bits_per_weight(name.lower()) == 8 * type_size / block_size


def test_mx_matches_gguf_mxfp4_and_spec():
    block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType.MXFP4]
    assert mx_bits_per_weight(4) == 8 * type_size / block_size == 4.25
    assert mx_bits_per_weight(8) == 8.25 and mx_bits_per_weight(6) == 6.25


def test_integer_nf4_ternary():
    assert integer_bits_per_weight(4, None) == 4
    assert integer_bits_per_weight(4, 128) == 4 + 16 / 128
    assert integer_bits_per_weight(3, 64, zero_point_bits=16) == 3.5
    # QLoRA Sec. 3: double quantization cuts the constants from 32/64 = 0.5 to 8/64 + 32/(64·256) ≈ 0.127
    assert nf4_bits_per_weight(double_quant=False) == 4.5
    assert nf4_bits_per_weight() == pytest.approx(4.127, abs=5e-4)
    assert ternary_bits_per_weight() == pytest.approx(1.58496, abs=1e-5)
    assert ternary_bits_per_weight("2bit", numel=1024) == 2 + 16 / 1024


@pytest.mark.parametrize("encoding", ["none", "bitmask", "index"])
@pytest.mark.parametrize("bits", [2, 3, 4.25, 5.5, 8])
def test_equal_compression_round_trips(encoding, bits):
    convention = Convention(encoding)
    sparsity = equal_compression_sparsity(bits, convention)
    assert 0 <= sparsity < 1
    assert sparse_bits_per_weight(sparsity, convention) == pytest.approx(bits, rel=1e-12)


def test_equal_compression_known_points():
    assert equal_compression_sparsity(4) == 0.75  # the paper: INT4 <-> 75 %
    assert equal_compression_sparsity(8) == 0.5
    assert equal_compression_sparsity(4, Convention("bitmask")) == 0.8125
    assert equal_compression_sparsity(4, Convention("index", index_bits=16)) == 0.875
    assert sparse_bits_per_weight(0.5, Convention("nm", n=2, m=4)) == 9.0
    assert sparse_bits_per_weight(0.75, Convention("nm", n=1, m=4)) == 4.5
    assert removal_bits_per_weight(0.25) == 12.0


def test_sparse_bits_decrease_with_sparsity():
    for encoding in ("none", "bitmask", "index"):
        values = [sparse_bits_per_weight(p, Convention(encoding)) for p in np.linspace(0, 0.95, 20)]
        assert np.all(np.diff(values) < 0)


def test_convention_records_itself():
    assert Convention().as_dict() == {"mask_encoding": "none", "base_bits": 16, "index_bits": 16, "n": 2, "m": 4}


@pytest.mark.parametrize("call, message", [
    (lambda: Convention("rle"), "unknown mask encoding"),
    (lambda: Convention(base_bits=0), "must be positive"),
    (lambda: Convention("nm", n=5, m=4), "N:M needs"),
    (lambda: equal_compression_sparsity(0.5, Convention("bitmask")), "no pruning equivalent"),
    (lambda: equal_compression_sparsity(17), "no pruning equivalent"),
    (lambda: equal_compression_sparsity(4, Convention("nm")), "N:M fixes the sparsity"),
    (lambda: sparse_bits_per_weight(0.7, Convention("nm")), "N:M 2:4 fixes the sparsity"),
    (lambda: sparse_bits_per_weight(1.0), r"sparsity must lie in \[0, 1\)"),
    (lambda: check_sparsity(math.nan), r"sparsity must lie in \[0, 1\)"),
    (lambda: check_sparsity(True), r"sparsity must lie in \[0, 1\)"),
    (lambda: check_bits(9), "integer in 2..8"),
    (lambda: check_bits(4.0), "integer in 2..8"),
    (lambda: kquant_bits_per_weight("Q7_K"), "unknown GGUF type"),
    (lambda: integer_bits_per_weight(0, None), "bits must be >= 1"),
    (lambda: ternary_bits_per_weight("3bit"), "unknown ternary packing"),
])
def test_bad_input(call, message):
    with pytest.raises(PvqError, match=message):
        call()


def test_numpy_scalars_are_accepted_and_give_the_python_results():
    assert check_bits(np.int64(4)) is None and check_sparsity(np.float32(0.5)) is None
    assert integer_bits_per_weight(np.int64(4), 128) == integer_bits_per_weight(4, 128) == 4 + 16 / 128
    assert removal_bits_per_weight(np.float64(0.25)) == removal_bits_per_weight(0.25) == 12.0
    with pytest.raises(PvqError, match="bits must be an integer"):
        check_bits(np.float64(4.0))
    with pytest.raises(PvqError, match=r"sparsity must lie in \[0, 1\)"):
        check_sparsity(np.float32(1.0))
