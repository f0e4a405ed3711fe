"""SQNR integrals vs Monte Carlo, published Gaussian values, clip search vs brute force, monotonicity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, optimize, stats

from theory.distributions import Empirical, Gaussian, Laplace, StudentT, TruncatedStudentT
from theory.errors import PvqError
from theory.formats import fp_values, get_format, int_grid, round_to_values, ternary_quantize
from theory.sqnr import (
    block_sqnr_db,
    fit_integer_grid,
    fit_scale,
    format_fit,
    grid_mse,
    mx_sqnr_db,
    optimal_clip,
    pruning_sqnr_db,
    quantization_sqnr_db,
    sqnr_db,
)

DISTRIBUTIONS = {
    "gaussian": Gaussian(),
    "laplace": Laplace(),
    "student-t k=6": StudentT.from_kurtosis(6.0),
    "truncated t k=20 T=6": TruncatedStudentT(20.0, 6.0),
}
SAMPLES = 1_000_000


def mc_mse(errors: np.ndarray) -> tuple[float, float]:
    squared = errors**2
    return float(squared.mean()), float(squared.std() / math.sqrt(squared.size))


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(11)
    return {name: dist.sample(SAMPLES, rng) for name, dist in DISTRIBUTIONS.items()}


@pytest.mark.parametrize("name", DISTRIBUTIONS)
@pytest.mark.parametrize("fmt", ["int4", "int2", "int3_asym", "fp4_e2m1", "fp6_e2m3", "ternary"])
def test_quantization_integral_matches_monte_carlo(name, fmt, samples):
    dist, w = DISTRIBUTIONS[name], samples[name]
    fit = format_fit(dist, get_format(fmt))
    mean, error = mc_mse(w - round_to_values(w, fit.levels))
    assert abs(fit.mse - mean) <= 4 * error
    assert fit.sqnr_db == pytest.approx(sqnr_db(dist.second_moment(), fit.mse))


@pytest.mark.parametrize("name", DISTRIBUTIONS)
@pytest.mark.parametrize("sparsity", [0.5, 0.75, 0.9])
def test_pruning_integral_matches_monte_carlo(name, sparsity, samples):
    dist, w = DISTRIBUTIONS[name], samples[name]
    threshold = float(dist.quantile(0.5 + sparsity / 2))
    mean, error = mc_mse(np.where(np.abs(w) < threshold, w, 0.0))
    assert abs(dist.small_magnitude_energy(sparsity) - mean) <= 4 * error


def gaussian_int4_mse_by_quadrature(step: float) -> float:
    """``E[(W − Q(W))²]`` for W ~ N(0, 1) and the levels ``{−8, …, 7}·step``, each cell integrated by ``quad``."""
    levels = np.arange(-8, 8) * step
    edges = np.concatenate([[-np.inf], (levels[1:] + levels[:-1]) / 2, [np.inf]])
    return sum(
        integrate.quad(lambda w, q=q: (w - q) ** 2 * stats.norm.pdf(w), low, high, epsabs=1e-14, epsrel=1e-12)[0]
        for q, low, high in zip(levels, edges[:-1], edges[1:], strict=True)
    )


def test_published_gaussian_values():
    """5.58 dB (pruning, 75 %) and 19.26 dB (INT4, MSE-optimal clip) as the docstring of theory.sqnr records."""
    gaussian = Gaussian()
    assert pruning_sqnr_db(gaussian, 0.75) == pytest.approx(5.58, abs=0.01)
    assert quantization_sqnr_db(gaussian, "int4") == pytest.approx(19.26, abs=0.01)


def test_gaussian_int4_equals_quadrature_at_the_best_step():
    best = optimize.minimize_scalar(
        gaussian_int4_mse_by_quadrature, bounds=(0.2, 0.6), method="bounded", options={"xatol": 1e-10}
    )
    assert quantization_sqnr_db(Gaussian(), "int4") == pytest.approx(-10 * math.log10(best.fun), abs=1e-6)
    assert optimal_clip(Gaussian(), 4) == pytest.approx(7 * best.x, rel=1e-6)


def test_gaussian_pruning_closed_form():
    """E[W² 1{|W|<t}] = (2Φ(t) - 1) - 2tφ(t) for the standard normal."""
    t = float(Gaussian().quantile(0.875))
    error = 0.75 - 2 * t * math.exp(-t * t / 2) / math.sqrt(2 * math.pi)
    assert pruning_sqnr_db(Gaussian(), 0.75) == pytest.approx(-10 * math.log10(error), rel=1e-12)


@pytest.mark.parametrize("name", DISTRIBUTIONS)
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_clip_search_beats_dense_scan(name, bits):
    dist = DISTRIBUTIONS[name]
    fit = fit_integer_grid(dist, bits)
    clips = np.linspace(0.2, 1.25 * dist.abs_quantile(1 - 1e-10), 1501)
    scan = [grid_mse(dist, int_grid(bits) * c / (2 ** (bits - 1) - 1)) for c in clips]
    assert fit.mse <= min(scan) * (1 + 1e-12)
    # at the optimum a small step either way does not lower the MSE
    for step in (1 - 1e-4, 1 + 1e-4):
        assert grid_mse(dist, fit.levels * step) >= fit.mse * (1 - 1e-12)


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_sqnr_increases_with_bits(name):
    dist = DISTRIBUTIONS[name]
    for symmetric in (True, False):
        values = [fit_integer_grid(dist, b, symmetric).sqnr_db for b in range(2, 9)]
        assert np.all(np.diff(values) > 0)
    clips = [optimal_clip(dist, b) for b in range(2, 9)]
    assert np.all(np.diff(clips) > 0)


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_pruning_sqnr_decreases_with_sparsity(name):
    values = [pruning_sqnr_db(DISTRIBUTIONS[name], p) for p in np.linspace(0.05, 0.95, 19)]
    assert np.all(np.diff(values) < 0)
    assert pruning_sqnr_db(DISTRIBUTIONS[name], 0.0) == math.inf


@pytest.mark.parametrize("name", DISTRIBUTIONS)
@pytest.mark.parametrize("bits", [2, 3, 5])
def test_centred_zero_point_is_optimal_on_symmetric_laws(name, bits):
    dist = DISTRIBUTIONS[name]
    codes = int_grid(bits, symmetric=False)
    exhaustive = min(fit_scale(dist, codes - z, (2**bits - 1) / 2).mse for z in range(2**bits))
    fit = fit_integer_grid(dist, bits, symmetric=False)
    assert fit.zero_point == 2 ** (bits - 1)
    assert fit.mse <= exhaustive * (1 + 1e-9)
    assert fit.sqnr_db == pytest.approx(fit_integer_grid(dist, bits).sqnr_db, abs=1e-9)


def test_zero_point_grid_helps_skewed_tensors():
    skewed = Empirical(np.random.default_rng(5).gamma(2.0, size=20000) - 0.5)
    assert fit_integer_grid(skewed, 3, symmetric=False).sqnr_db > fit_integer_grid(skewed, 3).sqnr_db + 0.5


def test_empirical_sqnr_equals_direct_tensor_computation():
    weights = np.random.default_rng(6).standard_t(5, size=(64, 96)).astype(np.float32)
    dist = Empirical(weights)
    w = weights.astype(np.float64).ravel()
    for fmt in ("int4", "int3_asym", "fp8_e4m3"):
        fit = format_fit(dist, get_format(fmt))
        direct = np.mean((w - round_to_values(w, fit.levels)) ** 2)
        assert fit.mse == pytest.approx(direct, rel=1e-9)
    ternary = format_fit(dist, get_format("ternary"))
    assert ternary.mse == pytest.approx(np.mean((w - ternary_quantize(w)) ** 2), rel=1e-9)
    kept = np.argsort(np.abs(w))[round(0.75 * w.size):]
    pruned = np.zeros_like(w)
    pruned[kept] = w[kept]
    assert pruning_sqnr_db(dist, 0.75) == pytest.approx(sqnr_db(np.mean(w**2), np.mean((w - pruned) ** 2)))


def test_explicit_clip_and_level_arrays():
    gaussian = Gaussian()
    assert quantization_sqnr_db(gaussian, "int4", clip=2.0) == pytest.approx(
        sqnr_db(1.0, grid_mse(gaussian, int_grid(4) * 2.0 / 7)))
    assert quantization_sqnr_db(gaussian, fp_values(2, 1), clip=3.0) == pytest.approx(
        sqnr_db(1.0, grid_mse(gaussian, fp_values(2, 1) * 0.5)))
    assert quantization_sqnr_db(gaussian, "int4") >= quantization_sqnr_db(gaussian, "int4", clip=2.0)


def test_mx_standard_error_matches_seed_spread():
    dist = StudentT.from_kurtosis(6.0)
    estimates = [mx_sqnr_db(dist, "fp4_e2m1", n_blocks=512, seed=seed) for seed in range(40)]
    values, errors = np.array([v for v, _ in estimates]), np.array([e for _, e in estimates])
    assert values.std(ddof=1) == pytest.approx(errors.mean(), rel=0.3)


def test_mx_monte_carlo_agrees_with_direct_quantization_of_a_tensor():
    weights = np.random.default_rng(8).normal(size=4096 * 32)
    dist = Empirical(weights)
    value, error = mx_sqnr_db(dist, "fp6_e2m3", n_blocks=1 << 15, seed=1)
    blocks = weights.reshape(-1, 32)
    from theory.formats import mx_quantize

    direct = sqnr_db(np.mean(weights**2), np.mean((blocks - mx_quantize(blocks, "fp6_e2m3")) ** 2))
    assert abs(value - direct) <= 4 * error + 0.02


def test_block_format_integral_is_refused_and_bad_input():
    with pytest.raises(PvqError, match="block_sqnr_db"):
        quantization_sqnr_db(Gaussian(), "mxfp4")
    with pytest.raises(PvqError, match=r"sparsity must lie in \[0, 1\)"):
        pruning_sqnr_db(Gaussian(), 1.0)
    with pytest.raises(PvqError, match=r"sparsity must lie in \[0, 1\)"):
        pruning_sqnr_db(Gaussian(), -0.1)
    with pytest.raises(PvqError, match=r"integer in 2\.\.16"):
        optimal_clip(Gaussian(), 1)
    with pytest.raises(PvqError, match="unknown MX element"):
        mx_sqnr_db(Gaussian(), "fp3")
    with pytest.raises(PvqError, match="at least 2 blocks"):
        block_sqnr_db(Gaussian(), lambda x: x, 32, n_blocks=1)
    with pytest.raises(PvqError, match="positive number of σ"):
        quantization_sqnr_db(Gaussian(), "int4", clip=-1.0)
