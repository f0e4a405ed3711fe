"""Block-bootstrap intervals: coverage on autocorrelated data, paired differences, verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from measure.evaluation.intervals import (
    Interval,
    bootstrap_mean,
    paired_difference,
    token_blocks,
    verdict,
)
from theory.errors import PvqError


def ar1(rng: np.random.Generator, n: int, phi: float, mean: float) -> np.ndarray:
    """A stationary AR(1) sequence x_t = φ x_{t−1} + e_t around ``mean`` (unit innovation variance)."""
    x = np.empty(n)
    x[0] = rng.normal() / np.sqrt(1 - phi**2)
    noise = rng.normal(size=n)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + noise[t]
    return x + mean


def test_blocks_are_contiguous_runs_inside_each_window():
    windows = np.repeat([0, 1, 2], [5, 3, 4])
    assert token_blocks(windows, 2).tolist() == [0, 0, 1, 1, 2, 3, 3, 4, 5, 5, 6, 6]


def test_blocks_refuse_tokens_out_of_window_order():
    with pytest.raises(PvqError, match="window order"):
        token_blocks(np.array([1, 0]))


def test_block_bootstrap_covers_the_true_mean_of_autocorrelated_tokens_near_95_percent():
    rng = np.random.default_rng(1)
    draws, n = 300, 4096
    blocks = token_blocks(np.repeat(np.arange(8), 512))
    covered = 0
    for _ in range(draws):
        interval = bootstrap_mean(ar1(rng, n, 0.5, 3.0), blocks, replicates=500, seed=int(rng.integers(1 << 30)))
        covered += interval.low <= 3.0 <= interval.high
    # Binomial standard error of the coverage over 300 draws at 95 %: 1.3 points.
    assert 0.89 <= covered / draws <= 0.99


def test_independent_token_intervals_are_too_narrow_on_the_same_data():
    """The reason for blocks: one-token blocks under-cover an AR(1) mean with φ = 0.8."""
    rng = np.random.default_rng(2)
    draws, n = 200, 4096
    single = np.arange(n)
    covered = sum(
        (lambda i: i.low <= 0.0 <= i.high)(bootstrap_mean(ar1(rng, n, 0.8, 0.0), single, replicates=300))
        for _ in range(draws)
    )
    assert covered / draws < 0.8


def test_a_variant_against_itself_has_the_interval_zero_zero():
    rng = np.random.default_rng(3)
    values = rng.gamma(2.0, size=1024)
    interval = paired_difference(values, values.copy(), token_blocks(np.repeat(np.arange(2), 512)))
    assert (interval.mean, interval.low, interval.high) == (0.0, 0.0, 0.0)
    assert not interval.excludes_zero()


def test_paired_interval_is_narrower_than_the_unpaired_one_for_correlated_variants():
    rng = np.random.default_rng(4)
    base = rng.gamma(2.0, size=4096)
    a, b = base + 0.05 * rng.normal(size=4096), base + 0.1 + 0.05 * rng.normal(size=4096)
    blocks = token_blocks(np.repeat(np.arange(8), 512))
    paired = paired_difference(a, b, blocks)
    separate = bootstrap_mean(a, blocks).half_width + bootstrap_mean(b, blocks).half_width
    assert paired.excludes_zero() and paired.high < 0
    assert paired.half_width < 0.2 * separate


def test_the_mean_lies_inside_its_interval_and_the_seed_fixes_it():
    values = np.random.default_rng(5).normal(size=700)
    blocks = token_blocks(np.zeros(700, dtype=int))
    first, second = bootstrap_mean(values, blocks), bootstrap_mean(values, blocks)
    assert first == second
    assert first.low <= first.mean <= first.high


def test_verdict_names_the_winner_only_when_the_interval_excludes_zero():
    assert verdict(Interval(-0.2, -0.3, -0.1)) == "a better"
    assert verdict(Interval(0.2, 0.1, 0.3)) == "b better"
    assert verdict(Interval(0.02, -0.01, 0.05)) == "indistinguishable"
    assert verdict(Interval(0.2, 0.1, 0.3), better_when="higher") == "a better"


def test_bad_values_are_one_clear_error():
    with pytest.raises(PvqError, match="NaN or Inf"):
        bootstrap_mean(np.array([1.0, np.nan]), np.array([0, 0]))
    with pytest.raises(PvqError, match="one block id per value"):
        bootstrap_mean(np.array([1.0, 2.0]), np.array([0]))
