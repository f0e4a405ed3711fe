"""Closed-form partial moments vs quadrature and Monte Carlo; kurtosis parameterization; bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, stats

from theory.distributions import (
    Empirical,
    Gaussian,
    Laplace,
    StudentT,
    Truncated,
    TruncatedStudentT,
    make_distribution,
)
from theory.errors import PvqError

PARAMETRIC = {
    "gaussian": Gaussian(),
    "laplace": Laplace(),
    "student-t k=6": StudentT.from_kurtosis(6.0),
    "student-t k=3.05": StudentT.from_kurtosis(3.05),
    "student-t k=50": StudentT.from_kurtosis(50.0),
    "truncated t k=20 T=4": TruncatedStudentT(20.0, 4.0),
    "truncated laplace T=2": Truncated(Laplace(), 2.0),
}
CELLS = [(-np.inf, -2.5), (-3.0, -0.4), (-1.0, 0.5), (0.2, 1.7), (2.0, np.inf), (-np.inf, np.inf)]


@pytest.mark.parametrize("name", PARAMETRIC)
def test_partial_moments_match_quadrature(name):
    dist = PARAMETRIC[name]
    lower, upper = np.array([c[0] for c in CELLS]), np.array([c[1] for c in CELLS])
    closed = dist.partial_moments(lower, upper)
    for k in range(3):
        for i, (a, b) in enumerate(CELLS):
            reference, _ = integrate.quad(lambda w, k=k: w**k * float(dist.pdf(w)), a, b,
                                          epsabs=1e-13, epsrel=1e-11, limit=400)
            assert closed[k][i] == pytest.approx(reference, rel=1e-8, abs=1e-12), (k, a, b)


@pytest.mark.parametrize("name", PARAMETRIC)
def test_moments_match_monte_carlo(name):
    dist = PARAMETRIC[name]
    rng = np.random.default_rng(1)
    w = dist.sample(1_000_000, rng)
    for a, b in [(-1.0, 0.5), (0.2, 1.7)]:
        inside = (w > a) & (w <= b)
        m0, m1, m2 = (float(m) for m in dist.partial_moments(np.array(a), np.array(b)))
        for closed, draws in [(m0, inside * 1.0), (m1, inside * w), (m2, inside * w * w)]:
            assert abs(draws.mean() - closed) <= 4 * draws.std() / np.sqrt(w.size)
    squares = w * w
    assert abs(squares.mean() - dist.second_moment()) <= 4 * squares.std() / np.sqrt(w.size)
    magnitudes = np.abs(w)
    assert abs(magnitudes.mean() - dist.abs_mean()) <= 4 * magnitudes.std() / np.sqrt(w.size)
    inside = np.abs(w) < dist.abs_quantile(0.6)
    assert abs(inside.mean() - 0.6) <= 4 * inside.std() / np.sqrt(w.size)


def test_unit_variance_and_known_kurtosis():
    assert Gaussian().second_moment() == pytest.approx(1.0, abs=1e-14)
    assert Laplace().second_moment() == pytest.approx(1.0, abs=1e-14)
    for kurtosis in (3.01, 4.0, 9.0, 300.0):
        assert StudentT.from_kurtosis(kurtosis).second_moment() == pytest.approx(1.0, rel=1e-9)


@pytest.mark.parametrize("kurtosis", [3.001, 3.5, 6.0, 27.0, 1000.0])
def test_kurtosis_parameterization_round_trips(kurtosis):
    dist = StudentT.from_kurtosis(kurtosis)
    assert dist.kurtosis() == pytest.approx(kurtosis, rel=1e-12)
    assert stats.t(dist.df).stats(moments="k") + 3 == pytest.approx(kurtosis, rel=1e-9)
    assert StudentT.from_kurtosis(dist.kurtosis()).df == pytest.approx(dist.df, rel=1e-12)


def test_truncated_kurtosis_matches_monte_carlo():
    dist = TruncatedStudentT(30.0, 5.0)
    w = dist.sample(1_000_000, np.random.default_rng(2))
    assert np.abs(w).max() <= 5.0
    assert stats.kurtosis(w, fisher=False) == pytest.approx(dist.kurtosis(), rel=0.02)
    assert dist.kurtosis() < 30.0


@pytest.mark.parametrize("name", PARAMETRIC)
def test_quantile_inverts_cdf(name):
    dist = PARAMETRIC[name]
    q = np.array([1e-6, 0.01, 0.3, 0.5, 0.77, 0.999])
    assert dist.cdf(dist.quantile(q)) == pytest.approx(q, rel=1e-9, abs=1e-12)
    assert dist.abs_quantile(0.5) == pytest.approx(float(dist.quantile(0.75)), rel=1e-12)


def test_empirical_matches_direct_sums():
    values = np.random.default_rng(3).standard_t(5, size=(37, 41)) + 0.3
    dist = Empirical(values)
    flat = values.ravel()
    m0, m1, m2 = dist.partial_moments(np.array([-0.5]), np.array([1.2]))
    inside = (flat > -0.5) & (flat <= 1.2)
    assert (m0[0], m1[0], m2[0]) == pytest.approx((inside.mean(), (flat * inside).mean(),
                                                   (flat**2 * inside).mean()), rel=1e-12)
    assert dist.second_moment() == pytest.approx(np.mean(flat**2), rel=1e-12)
    assert dist.kurtosis() == pytest.approx(stats.kurtosis(flat, fisher=False), rel=1e-10)
    k = round(0.4 * flat.size)
    assert dist.small_magnitude_energy(0.4) == pytest.approx(np.sort(flat**2)[:k].sum() / flat.size, rel=1e-12)


def test_make_distribution():
    assert isinstance(make_distribution("gaussian"), Gaussian)
    assert isinstance(make_distribution("student-t", kurtosis=5), StudentT)
    truncated = make_distribution("student-t", kurtosis=5, truncate=3)
    assert isinstance(truncated, TruncatedStudentT) and truncated.bound == 3.0
    assert make_distribution("laplace", truncate=2.0).name == "truncated-laplace"


@pytest.mark.parametrize("call, message", [
    (lambda: StudentT.from_kurtosis(3.0), "kurtosis must be a finite number > 3"),
    (lambda: StudentT.from_kurtosis(2.0), "kurtosis must be a finite number > 3"),
    (lambda: StudentT(2.0), "degrees of freedom > 2"),
    (lambda: TruncatedStudentT(6.0, 0.0), "truncation point"),
    (lambda: make_distribution("cauchy"), "unknown distribution"),
    (lambda: make_distribution("student-t"), "needs its kurtosis"),
    (lambda: make_distribution("gaussian", kurtosis=4.0), "fixed kurtosis"),
    (lambda: Empirical(np.array([1.0, np.nan])), "finite values"),
])
def test_bad_input_raises_one_clear_error(call, message):
    with pytest.raises(PvqError, match=message):
        call()
