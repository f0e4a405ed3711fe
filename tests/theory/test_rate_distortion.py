"""Gaussian rate–distortion reference: 6.02 dB per bit, brute-force water-filling, INT-b optimum stays below."""

from __future__ import annotations

import math

import numpy as np
import pytest

from theory.chunk_problem import make_chunk_problem
from theory.errors import PvqError
from theory.integer_least_squares import QuantGrid, exact_quantize, mse_scale
from theory.rate_distortion import (
    decoder_rd_relative_error,
    joint_rd_relative_errors,
    layer_spectrum,
    rd_relative_error,
    rd_sqnr_db,
    water_filling,
)


def _bisection_distortion(variances: np.ndarray, rate_bits: float) -> float:
    """``D(θ)`` with θ found by bisection on log2 θ until ``R(θ) = rate_bits`` (bracket to 1e-13).

    ``R(θ)`` decreases in θ, and ``max σ²·2^(−2R) <= θ <= max σ²·2^(−2R/n)`` since one component alone, or
    all n at the largest variance, would carry the whole rate."""
    if rate_bits == 0:
        return float(variances.sum())
    peak = float(variances.max())
    low, high = math.log2(peak) - 2 * rate_bits, math.log2(peak) - 2 * rate_bits / variances.size
    while high - low > 1e-13:
        middle = (low + high) / 2
        rate = np.maximum(0.0, 0.5 * (np.log2(variances) - middle)).sum()
        low, high = (middle, high) if rate > rate_bits else (low, middle)
    return float(np.minimum(2.0 ** ((low + high) / 2), variances).sum())


def _orthogonal_columns(generator: np.random.Generator, rows: int, scales: np.ndarray) -> np.ndarray:
    """A (rows × in) weight with ``WᵀW/rows = diag(scales²)``: orthonormal columns times ``√rows·scales``."""
    basis, _ = np.linalg.qr(generator.standard_normal((rows, scales.size)))
    return basis * scales * math.sqrt(rows)


def test_white_gram_and_active_components_gain_six_db_per_bit():
    generator = np.random.default_rng(0)
    weight = generator.standard_normal((40, 8))
    spectrum = layer_spectrum(np.eye(8), weight)
    coordinates = weight @ np.linalg.eigh(np.eye(8))[1]  # the eigenbasis numpy picks for H = I
    np.testing.assert_allclose(spectrum, np.sort((coordinates**2).mean(axis=0))[::-1], rtol=1e-12)
    theta, _ = water_filling(spectrum, 2 * spectrum.size)
    assert theta < spectrum.min()  # every component stays above the water level from b = 2 on
    for bits in range(2, 16):
        step = rd_sqnr_db(spectrum, bits + 1) - rd_sqnr_db(spectrum, bits)
        assert step == pytest.approx(20 * math.log10(2), abs=1e-9)


def test_diagonal_gram_and_independent_columns_match_brute_force_water_filling():
    generator = np.random.default_rng(1)
    gram_diagonal = np.exp(generator.uniform(-3, 3, 10))
    scales = np.exp(generator.uniform(-2, 2, 10))
    weight = _orthogonal_columns(generator, 25, scales)
    variances = gram_diagonal * scales**2
    spectrum = layer_spectrum(np.diag(gram_diagonal), weight)
    np.testing.assert_allclose(spectrum, np.sort(variances)[::-1], rtol=1e-10)
    switched_off = 0
    for bits in np.linspace(0.0, 6.0, 121):
        expected = _bisection_distortion(variances, bits * variances.size) / variances.sum()
        assert rd_relative_error(spectrum, bits) == pytest.approx(expected, rel=1e-11)
        theta, _ = water_filling(variances, bits * variances.size)
        switched_off += bool(bits > 0 and (variances <= theta).any())
    assert switched_off >= 10  # the dense set of rates includes rates with inactive components


def test_water_filling_rate_zero_exact_rate_and_decreasing_distortion():
    generator = np.random.default_rng(2)
    variances = np.concatenate([np.exp(generator.uniform(-5, 2, 12)), [0.0]])
    assert water_filling(variances, 0) == (pytest.approx(variances.max()), pytest.approx(variances.sum()))
    distortions = []
    for rate in np.linspace(0.1, 40.0, 200):
        theta, distortion = water_filling(variances, rate)
        positive = variances[variances > 0]
        assert np.maximum(0.0, 0.5 * np.log2(positive / theta)).sum() == pytest.approx(rate, abs=1e-9)
        assert distortion == pytest.approx(np.minimum(theta, variances).sum(), rel=1e-12)
        distortions.append(distortion)
    assert np.all(np.diff(distortions) < 0)
    assert water_filling(np.zeros(3), 5.0) == (0.0, 0.0)


def test_spectrum_sums_to_the_mean_row_output_energy_and_is_the_weighted_coordinate_variance():
    generator = np.random.default_rng(3)
    inputs = generator.standard_normal((30, 7)) @ generator.standard_normal((7, 7))
    gram = inputs.T @ inputs
    eigenvalues, eigenvectors = np.linalg.eigh(gram)
    for rows in (4, 12):  # fewer and more rows than inputs: every coordinate keeps its own variance
        weight = generator.standard_normal((rows, 7))
        spectrum = layer_spectrum(gram, weight)
        assert spectrum.sum() == pytest.approx(np.trace(weight @ gram @ weight.T) / rows, rel=1e-12)
        direct = [eigenvalues[j] * np.mean([(eigenvectors[:, j] @ w) ** 2 for w in weight]) for j in range(7)]
        np.testing.assert_allclose(spectrum, np.sort(direct)[::-1], rtol=1e-10)
        assert np.all(np.diff(spectrum) <= 0) and np.all(spectrum > 0) and spectrum.size == 7


def test_exact_int_optimum_on_gaussian_rows_stays_below_the_gaussian_reference():
    log_ratios: dict[int, list[float]] = {2: [], 3: [], 4: []}
    for seed in range(5):
        generator = np.random.default_rng(10 + seed)
        inputs = generator.standard_normal((64, 8)) @ (np.eye(8) + 0.5 * generator.standard_normal((8, 8)))
        gram = inputs.T @ inputs
        weight = generator.standard_normal((6, 8)) @ (np.eye(8) + 0.3 * generator.standard_normal((8, 8)))
        spectrum = layer_spectrum(gram, weight)
        for bits, ratios in log_ratios.items():
            reference = rd_relative_error(spectrum, bits)
            for row in weight:
                problem = make_chunk_problem(row, gram)
                result = exact_quantize(problem, QuantGrid.signed(bits, mse_scale(row, bits)))
                assert result.status == "optimal"
                ratios.append(math.log10(result.value / problem.signal / reference))
    for ratios in log_ratios.values():
        assert np.median(ratios) > 0


@pytest.mark.parametrize(("call", "message"), [
    (lambda: rd_relative_error(np.ones(4), -1.0), "bits per weight must be a finite number >= 0"),
    (lambda: rd_relative_error(np.ones(4), math.inf), "bits per weight must be a finite number >= 0"),
    (lambda: rd_relative_error(np.ones(4), math.nan), "bits per weight must be a finite number >= 0"),
    (lambda: rd_relative_error(np.zeros(4), 2.0), "zero output energy"),
    (lambda: rd_relative_error(np.array([1.0, -1.0]), 2.0), "finite and >= 0"),
    (lambda: water_filling(np.ones(3), -0.5), "rate in bits must be a finite number >= 0"),
    (lambda: water_filling(np.array([]), 1.0), "non-empty vector"),
    (lambda: layer_spectrum(np.eye(3), np.ones(3)), "weight must be a non-empty matrix"),
    (lambda: layer_spectrum(np.eye(4), np.ones((2, 3))), "match the weight's 3 input features"),
    (lambda: layer_spectrum(np.ones((3, 4)), np.ones((2, 3))), "must be square"),
    (lambda: layer_spectrum(np.triu(np.ones((3, 3))), np.ones((2, 3))), "not symmetric"),
    (lambda: layer_spectrum(-np.eye(3), np.ones((2, 3))), "not positive semidefinite"),
    (lambda: layer_spectrum(np.array([[1.0, 2.0], [2.0, 1.0]]), np.ones((1, 2))), "not positive semidefinite"),
    (lambda: layer_spectrum(np.eye(3), np.full((2, 3), math.nan)), "NaN or infinite"),
])  # fmt: skip
def test_bad_input_raises_one_clear_error(call, message):
    with pytest.raises(PvqError, match=message):
        call()


def _random_spectra(seed: int) -> tuple[list[np.ndarray], list[int]]:
    """Three layers of different widths, heights and spectra (σ² log-uniform over four decades, random scale)."""
    generator = np.random.default_rng(seed)
    spectra = [10.0 ** generator.uniform(-4, 0, size) * generator.uniform(0.1, 10) for size in (6, 9, 4)]
    return spectra, [5, 3, 8]


def test_water_filling_with_counts_is_water_filling_on_the_repeated_components():
    generator = np.random.default_rng(3)
    variances, counts = generator.uniform(0.01, 2.0, 7), np.array([1, 4, 2, 1, 3, 5, 2])
    for rate in (0.0, 0.7, 5.0, 40.0):
        joint = water_filling(variances, rate, counts)
        repeated = water_filling(np.repeat(variances, counts), rate)
        assert joint == pytest.approx(repeated, rel=1e-12)
        assert joint[1] == pytest.approx(_bisection_distortion(np.repeat(variances, counts), rate), rel=1e-9)


@pytest.mark.parametrize("weighting", ["energy", "parameters"])
def test_joint_water_filling_over_identical_layers_is_the_per_layer_reference(weighting):
    spectrum = np.random.default_rng(4).uniform(0.01, 3.0, 8)
    for bits in (0.5, 2.0, 4.0):
        per_layer = rd_relative_error(spectrum, bits)
        assert joint_rd_relative_errors([spectrum] * 3, [4] * 3, bits, [1.0] * 3) == pytest.approx([per_layer] * 3)
        assert decoder_rd_relative_error([spectrum] * 3, [4] * 3, [bits], weighting)[0] == pytest.approx(per_layer)


def test_two_single_component_layers_match_the_closed_form():
    """Variances a > c, one row each, 2b bits in all: both active when 2b > ½·log2(a/c), with
    here ``log2 θ = (log2 a + log2 c − 2·2b)/2``, D = 2θ, relative error ``2θ/(a + c)``; below that, only a is
    coded: θ = a·2^(−2·2b), D = θ + c."""
    a, c = 4.0, 0.25
    for bits in (0.25, 0.5, 1.5, 3.0):
        both = 2.0 ** ((math.log2(a) + math.log2(c) - 4 * bits) / 2)
        expected = 2 * both / (a + c) if both < c else (a * 2.0 ** (-4 * bits) + c) / (a + c)
        measured = decoder_rd_relative_error([np.array([a]), np.array([c])], [1, 1], [bits], "energy")[0]
        assert measured == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("weighting", ["energy", "parameters"])
def test_joint_allocation_is_the_best_split_of_the_bits_between_two_layers(weighting):
    """Brute force: every split of the budget between two layers on a fine grid, each layer water-filled alone
    (:func:`rd_relative_error`): the joint answer is never worse, and the best split comes within the grid step."""
    spectra, rows = _random_spectra(5)
    spectra, rows = spectra[:2], rows[:2]
    sizes = np.array([count * spectrum.size for count, spectrum in zip(rows, spectra, strict=True)], float)
    energies = np.array([count * spectrum.sum() for count, spectrum in zip(rows, spectra, strict=True)])
    weights = energies if weighting == "energy" else sizes
    bits = 2.0
    best = np.inf
    for first in np.linspace(0.0, bits * sizes.sum() / sizes[0], 4001):
        second = (bits * sizes.sum() - first * sizes[0]) / sizes[1]
        relative = [rd_relative_error(spectra[0], first), rd_relative_error(spectra[1], max(second, 0.0))]
        best = min(best, float(weights @ relative / weights.sum()))
    joint = decoder_rd_relative_error(spectra, rows, [bits], weighting)[0]
    assert joint <= best * (1 + 1e-12)
    assert joint == pytest.approx(best, rel=1e-4)


@pytest.mark.parametrize("weighting", ["energy", "parameters"])
def test_joint_reference_is_at_least_the_per_layer_one_in_the_weighted_aggregate(weighting):
    spectra, rows = _random_spectra(6)
    sizes = np.array([count * spectrum.size for count, spectrum in zip(rows, spectra, strict=True)], float)
    energies = np.array([count * spectrum.sum() for count, spectrum in zip(rows, spectra, strict=True)])
    weights = energies if weighting == "energy" else sizes
    bits = [0.5, 1.0, 2.0, 3.0, 4.0, 8.0]
    joint = decoder_rd_relative_error(spectra, rows, bits, weighting)
    per_layer = [float(weights @ [rd_relative_error(s, b) for s in spectra] / weights.sum()) for b in bits]
    assert np.all(joint <= np.array(per_layer) * (1 + 1e-12))
    assert np.all(np.diff(joint) < 0)
    assert joint[2] < 0.97 * per_layer[2]  # the spectra differ enough for a real gain


def test_decoder_reference_rejects_an_unknown_weighting_and_a_silent_layer():
    spectra, rows = _random_spectra(7)
    with pytest.raises(PvqError, match=r"unknown decoder weighting 'energie'.*did you mean 'energy'"):
        decoder_rd_relative_error(spectra, rows, [2.0], "energie")
    with pytest.raises(PvqError, match="zero output energy"):
        joint_rd_relative_errors([*spectra, np.zeros(3)], [*rows, 2], 2.0, [1.0] * 4)
    with pytest.raises(PvqError, match="one row count and one weight per layer"):
        joint_rd_relative_errors(spectra, rows[:2], 2.0, [1.0] * 3)
