"""Study tables: contract columns, equal-compression bookkeeping, determinism, the pruning-wins region."""

from __future__ import annotations

import json

import numpy as np
import pytest

from theory.accounting import Convention, sparse_bits_per_weight
from theory.distributions import Gaussian, StudentT, TruncatedStudentT
from theory.errors import PvqError
from theory.formats import FORMATS, int_grid, round_to_values
from theory.sqnr import pruning_sqnr_db, quantization_sqnr_db, sqnr_db
from theory.study import (
    COMPARISON_COLUMNS,
    FORMAT_COLUMNS,
    compare_at_equal_compression,
    format_sqnr_table,
    kurtosis_bits_table,
    tensor_sqnr_table,
)


@pytest.fixture(scope="module")
def gaussian_table():
    return format_sqnr_table("gaussian", n_blocks=2048, seed=3)


def test_format_table_rows_and_columns(gaussian_table):
    table = gaussian_table
    assert list(table.columns) == FORMAT_COLUMNS
    quant = table[table.family == "quantization"]
    assert list(quant.format) == list(FORMATS)
    assert list(quant.method[quant.format.str.match(r"int\d$")]) == ["int"] * 7
    assert set(quant.method[quant.format == "mxfp4"]) == {"mxfp4"}
    assert (quant.sqnr_se_db[quant.format.str.startswith("mx")] > 0).all()
    int4 = quant.set_index("format").loc["int4"]
    assert int4.sqnr_db == pytest.approx(quantization_sqnr_db(Gaussian(), "int4"))
    prune = table[table.family == "pruning"]
    assert sorted(prune.bits_per_weight) == pytest.approx(sorted(set(quant.bits_per_weight)))
    four = prune[prune.bits_per_weight == 4.0].iloc[0]
    assert four.sparsity == 0.75 and round(four.sqnr_db, 1) == 5.6
    assert {json.loads(c)["mask_encoding"] for c in table.convention} == {"none"}


def test_format_table_is_deterministic(gaussian_table):
    again = format_sqnr_table("gaussian", n_blocks=2048, seed=3)
    assert again.equals(gaussian_table)


def test_format_table_under_nm_has_one_pruning_point():
    table = format_sqnr_table(TruncatedStudentT(8.0, 6.0), Convention("nm", n=2, m=4), n_blocks=64)
    prune = table[table.family == "pruning"]
    assert list(prune.sparsity) == [0.5] and list(prune.bits_per_weight) == [9.0]


def test_kurtosis_table_bookkeeping():
    convention = Convention("bitmask")
    table = kurtosis_bits_table([3.5, 12.0], [2, 4, 8], convention)
    assert list(table.columns)[: len(COMPARISON_COLUMNS)] == COMPARISON_COLUMNS
    assert len(table) == 6
    assert np.allclose(table.diff_db, table.quant_sqnr_db - table.prune_sqnr_db)
    assert (table.pruning_wins == (table.diff_db < 0)).all()
    assert np.allclose(table.prune_bits_per_weight, table.bits_per_weight)
    assert np.allclose(table.sparsity, 1 - (table.bits - 1) / 16)
    assert np.allclose(table["kurtosis"], table.kurtosis_parameter)
    row = table.iloc[4]
    dist = StudentT.from_kurtosis(12.0)
    assert row.quant_sqnr_db == pytest.approx(quantization_sqnr_db(dist, "int4"))
    assert row.prune_sqnr_db == pytest.approx(pruning_sqnr_db(dist, 1 - 3 / 16))


def test_pruning_wins_only_at_high_compression_with_heavy_bounded_tails():
    """With the clip at the truncation point (paper Fig. 2), pruning wins at 2 bits, never at 8."""
    table = kurtosis_bits_table([4.0, 100.0], [2, 8], truncate=20.0, clip_rule="range")
    assert table[table.bits == 2].pruning_wins.all()
    assert not table[table.bits == 8].pruning_wins.any()
    assert (table["kurtosis"] < table.kurtosis_parameter).all()
    mse_clip = kurtosis_bits_table([4.0, 100.0], [2, 8], truncate=20.0)
    assert (mse_clip.quant_sqnr_db > table.quant_sqnr_db).all()


def test_tensor_table_equals_direct_tensor_computation():
    weights = np.random.default_rng(4).standard_t(4, size=(48, 64))
    table = tensor_sqnr_table(weights, [3, 6], Convention())
    w = weights.ravel()
    for row in table.itertuples():
        scale = row.clip_sigma * w.std() / (2 ** (row.bits - 1) - 1)
        quantized = round_to_values(w, int_grid(row.bits) * scale)
        assert row.quant_sqnr_db == pytest.approx(sqnr_db(np.mean(w**2), np.mean((w - quantized) ** 2)))
        pruned = np.where(np.abs(w) >= np.sort(np.abs(w))[round(row.sparsity * w.size)], w, 0.0)
        assert row.prune_sqnr_db == pytest.approx(sqnr_db(np.mean(w**2), np.mean((w - pruned) ** 2)))
    assert (table.numel == w.size).all()
    assert table["kurtosis"].iloc[0] > 3


def test_bad_input():
    dist = StudentT.from_kurtosis(6.0)
    with pytest.raises(PvqError, match=r"integer in 2\.\.8"):
        compare_at_equal_compression(dist, 9)
    with pytest.raises(PvqError, match="unknown clip rule"):
        compare_at_equal_compression(dist, 4, clip_rule="max")
    with pytest.raises(PvqError, match="bounded distribution"):
        compare_at_equal_compression(dist, 4, clip_rule="range")
    with pytest.raises(PvqError, match="kurtosis must be a finite number > 3"):
        kurtosis_bits_table([2.5], [4])
    assert sparse_bits_per_weight(0.75) == 4.0
