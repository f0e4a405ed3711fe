"""Chunk problems: damping, chunking, the sub-problem identity, equal compression, SQNR aggregation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from theory.accounting import Convention
from theory.chunk_problem import (
    SolverResult,
    aggregate_sqnr,
    check_kept,
    chunk_problems,
    chunk_slices,
    damped_gram,
    equal_compression_kept,
    kept_count,
    layer_signal,
    make_chunk_problem,
    row_error,
)
from theory.errors import PvqError
from theory.sqnr import sqnr_db
from theory.synthetic_layer import synthetic_activations, synthetic_weights


def test_damping_is_the_augmented_data_gram():
    generator = np.random.default_rng(0)
    activations = synthetic_activations(generator, width=12, tokens=64)
    damped, damping = damped_gram(activations.T @ activations, relative_damping=0.05)
    assert damping == pytest.approx(0.05 * np.mean(np.sum(activations**2, axis=0)))
    augmented = np.vstack([activations, np.sqrt(damping) * np.eye(12)])
    np.testing.assert_allclose(damped, augmented.T @ augmented, rtol=1e-12)


def test_singular_gram_is_damped_and_rejected_without_damping():
    generator = np.random.default_rng(1)
    low_rank = generator.standard_normal((3, 8))
    singular = low_rank.T @ low_rank
    damped, damping = damped_gram(singular)
    assert np.linalg.eigvalsh(damped)[0] == pytest.approx(damping, rel=1e-6)
    weights = generator.standard_normal(8)
    assert make_chunk_problem(weights, damped).size == 8
    with pytest.raises(PvqError, match="damping > 0"):
        make_chunk_problem(weights, damped_gram(singular, relative_damping=0.0)[0])
    with pytest.raises(PvqError, match="damping > 0"):
        list(chunk_problems(weights[None, :], singular, opt_dim=4, relative_damping=0.0))


def test_all_zero_gram_gets_unit_scale_damping():
    damped, damping = damped_gram(np.zeros((4, 4)), relative_damping=0.01)
    assert damping == 0.01
    np.testing.assert_array_equal(damped, 0.01 * np.eye(4))
    with pytest.raises(PvqError, match="damping > 0"):
        make_chunk_problem(np.ones(4), damped_gram(np.zeros((4, 4)), relative_damping=0.0)[0])


@pytest.mark.parametrize(
    ("gram", "message"),
    [
        (np.full((3, 3), np.nan), "NaN"),
        (np.array([[1.0, 2.0], [0.0, 1.0]]), "not symmetric"),
        (np.array([[1.0, 0.0], [0.0, -1.0]]), "negative diagonal"),
        (np.ones((2, 3)), "square"),
    ],
)
def test_bad_grams_raise_one_clear_error(gram, message):
    with pytest.raises(PvqError, match=message):
        damped_gram(gram)


def test_indefinite_gram_is_rejected_per_chunk():
    with pytest.raises(PvqError, match="not positive semidefinite"):
        make_chunk_problem(np.ones(2), np.array([[1.0, 2.0], [2.0, 1.0]]), damping=0.5)


def test_bad_damping_and_weights_raise():
    with pytest.raises(PvqError, match="relative damping"):
        damped_gram(np.eye(2), relative_damping=-1.0)
    with pytest.raises(PvqError, match="does not match"):
        make_chunk_problem(np.ones(3), np.eye(2))
    with pytest.raises(PvqError, match="NaN"):
        make_chunk_problem(np.array([1.0, np.inf]), np.eye(2))


def test_chunk_slices_cover_the_row_and_reject_opt_dim_above_width():
    slices = chunk_slices(70, 32)
    assert [(part.start, part.stop) for part in slices] == [(0, 32), (32, 64), (64, 70)]
    with pytest.raises(PvqError, match="larger than the layer"):
        chunk_slices(16, 32)
    with pytest.raises(PvqError, match="opt-dim"):
        chunk_slices(16, 0)


def test_chunk_error_is_the_row_error_with_other_weights_held():
    generator = np.random.default_rng(2)
    activations = synthetic_activations(generator, width=20, tokens=256)
    weight = synthetic_weights(generator, rows=3, width=20)
    damped, _ = damped_gram(activations.T @ activations)
    for row, chunk, problem in chunk_problems(weight, activations.T @ activations, opt_dim=8):
        compressed_chunk = problem.weights + generator.normal(0, 0.01, problem.size)
        compressed_row = weight[row].copy()
        compressed_row[chunk] = compressed_chunk
        assert problem.error(compressed_chunk) == pytest.approx(
            row_error(damped, weight[row], compressed_row), rel=1e-10
        )


def test_summed_chunk_errors_are_the_block_diagonal_surrogate():
    generator = np.random.default_rng(3)
    gram = synthetic_activations(generator, width=16, tokens=128)
    gram = gram.T @ gram
    weight = synthetic_weights(generator, rows=1, width=16)
    compressed = weight[0] + generator.normal(0, 0.01, 16)
    damped, _ = damped_gram(gram)
    block_diagonal = np.zeros_like(damped)
    total = 0.0
    for _, chunk, problem in chunk_problems(weight, gram, opt_dim=5):
        block_diagonal[chunk, chunk] = damped[chunk, chunk]
        total += problem.error(compressed[chunk])
    assert total == pytest.approx(row_error(block_diagonal, weight[0], compressed), rel=1e-10)


def test_chunk_problems_reject_bad_rows_and_shapes():
    with pytest.raises(PvqError, match="outside"):
        list(chunk_problems(np.ones((2, 4)), np.eye(4), opt_dim=2, rows=[5]))
    with pytest.raises(PvqError, match="does not match"):
        list(chunk_problems(np.ones((2, 4)), np.eye(5), opt_dim=2))


def test_equal_compression_kept_counts():
    assert equal_compression_kept(32, 4) == 8
    assert equal_compression_kept(32, 8) == 16
    assert equal_compression_kept(32, 4, Convention(mask_encoding="bitmask")) == round(32 * 3 / 16)
    assert kept_count(10, 0.75) == round(2.5)
    with pytest.raises(PvqError, match="bits"):
        equal_compression_kept(32, 9)
    with pytest.raises(PvqError, match="kept weights"):
        check_kept(8, 8)
    with pytest.raises(PvqError, match="kept weights"):
        check_kept(8, -1)


def test_output_sqnr_from_grams_matches_direct_outputs():
    generator = np.random.default_rng(4)
    activations = synthetic_activations(generator, width=10, tokens=200)
    weight = synthetic_weights(generator, rows=4, width=10)
    compressed = weight + generator.normal(0, 0.005, weight.shape)
    gram = activations.T @ activations
    errors = [row_error(gram, weight[row], compressed[row]) for row in range(4)]
    direct = 10 * np.log10(
        np.sum((activations @ weight.T) ** 2) / np.sum((activations @ (compressed - weight).T) ** 2)
    )
    assert sqnr_db(layer_signal(weight, gram), sum(errors)) == pytest.approx(direct, rel=1e-10)
    assert sqnr_db(1.0, 0.0) == math.inf
    with pytest.raises(PvqError):
        sqnr_db(-1.0, 1.0)


def _result(value: float, lower: float) -> SolverResult:
    return SolverResult("test", value, np.zeros(1), np.zeros(1), "heuristic", lower, 0, 0.0)


def test_aggregate_sums_errors_and_orders_the_interval():
    interval = aggregate_sqnr(100.0, [_result(2.0, 1.0), _result(3.0, 1.5)])
    assert interval.lower_db == pytest.approx(10 * np.log10(100 / 5))
    assert interval.upper_db == pytest.approx(10 * np.log10(100 / 2.5))
    with pytest.raises(PvqError, match="no chunk results"):
        aggregate_sqnr(1.0, [])


def test_one_chunk_per_row_over_the_row_signal_is_the_layer_sqnr_with_only_that_chunk_compressed():
    generator = np.random.default_rng(5)
    activations = synthetic_activations(generator, width=12, tokens=300)
    weight = synthetic_weights(generator, rows=3, width=12)
    gram = activations.T @ activations
    chunk = chunk_slices(12, 4)[1]
    compressed = weight.copy()
    compressed[:, chunk] = np.round(weight[:, chunk] / 0.01) * 0.01
    problems = [make_chunk_problem(weight[row, chunk], gram[chunk, chunk]) for row in range(3)]
    results = [_result(problem.error(compressed[row, chunk]), 0.0) for row, problem in enumerate(problems)]
    direct = 10 * np.log10(
        np.sum((activations @ weight.T) ** 2) / np.sum((activations @ (compressed - weight).T) ** 2)
    )
    assert aggregate_sqnr(layer_signal(weight, gram), results).lower_db == pytest.approx(direct, rel=1e-10)


def test_solver_result_rejects_unknown_status_and_reports_gap():
    assert _result(4.0, 3.0).gap == pytest.approx(0.25)
    with pytest.raises(PvqError, match="status"):
        SolverResult("test", 1.0, np.zeros(1), np.zeros(1), "done", 0.0, 0, 0.0)
