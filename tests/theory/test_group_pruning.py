"""Group removal of input columns: Schur cost, refit, greedy and exact selection against direct computation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from theory.errors import PvqError
from theory.group_pruning import (
    columns_of,
    exact_groups,
    greedy_groups,
    lowest_scores,
    refit_weights,
    schur_cost,
    unrefit_cost,
    wanda_scores,
)


def instance(seed: int, columns: int = 12, rows: int = 5, tokens: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Correlated inputs X (tokens × columns) and weights W (rows × columns)."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(columns, columns)) * 0.5 + np.eye(columns)
    inputs = rng.normal(size=(tokens, columns)) @ mixing * rng.uniform(0.2, 2.0, size=columns)
    return inputs, rng.normal(size=(rows, columns))


def direct_error(inputs: np.ndarray, weights: np.ndarray, removed: np.ndarray, kept_weights: np.ndarray) -> float:
    """‖X_K Ŵ_Kᵀ − X Wᵀ‖²_F computed on the inputs themselves."""
    kept = np.setdiff1d(np.arange(weights.shape[1]), removed)
    return float(((inputs[:, kept] @ kept_weights.T - inputs @ weights.T) ** 2).sum())


def heads(columns: int, width: int) -> list[list[int]]:
    return [list(range(start, start + width)) for start in range(0, columns, width)]


@pytest.mark.parametrize("seed", range(4))
def test_schur_cost_equals_the_directly_computed_refit_error(seed):
    inputs, weights = instance(seed)
    removed = np.array([1, 4, 5, 9])
    refit = refit_weights(inputs.T @ inputs, weights, removed)
    assert schur_cost(inputs.T @ inputs, weights, removed) == pytest.approx(
        direct_error(inputs, weights, removed, refit), rel=1e-9
    )


@pytest.mark.parametrize("seed", range(4))
def test_refit_never_increases_the_output_error_computed_from_the_inputs(seed):
    inputs, weights = instance(seed)
    gram = inputs.T @ inputs
    for removed in (np.array([0]), np.array([2, 3, 7]), np.arange(6)):
        kept = np.setdiff1d(np.arange(weights.shape[1]), removed)
        unchanged = direct_error(inputs, weights, removed, weights[:, kept])
        assert unchanged == pytest.approx(unrefit_cost(gram, weights, removed), rel=1e-9)
        refit = refit_weights(gram, weights, removed)
        assert direct_error(inputs, weights, removed, refit) <= unchanged * (1 + 1e-12)


def test_refit_is_the_least_squares_solution_of_the_kept_columns():
    inputs, weights = instance(7)
    removed = np.array([0, 5])
    kept = np.setdiff1d(np.arange(weights.shape[1]), removed)
    solution = np.linalg.lstsq(inputs[:, kept], inputs @ weights.T, rcond=None)[0].T
    np.testing.assert_allclose(refit_weights(inputs.T @ inputs, weights, removed), solution, rtol=1e-8, atol=1e-10)


def brute_force(gram, weights, groups, count, classes=None, quota=None) -> float:
    costs = []
    for chosen in itertools.combinations(range(len(groups)), count):
        if classes is not None and max(np.bincount([classes[g] for g in chosen], minlength=1)) > quota:
            continue
        costs.append(schur_cost(gram, weights, columns_of(groups, chosen)))
    return min(costs)


@pytest.mark.parametrize(("seed", "width", "count"), [(0, 1, 3), (1, 1, 5), (2, 2, 2), (3, 3, 2), (4, 2, 4)])
def test_exact_group_selection_equals_brute_force(seed, width, count):
    inputs, weights = instance(seed)
    gram, groups = inputs.T @ inputs, heads(12, width)
    exact = exact_groups(gram, weights, groups, count)
    assert exact.cost == pytest.approx(brute_force(gram, weights, groups, count), rel=1e-9)
    assert exact.cost == pytest.approx(schur_cost(gram, weights, columns_of(groups, exact.removed)), rel=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_exact_selection_with_a_per_class_quota_equals_brute_force_under_the_quota(seed):
    inputs, weights = instance(seed)
    gram, groups, classes = inputs.T @ inputs, heads(12, 2), [0, 0, 0, 1, 1, 1]
    exact = exact_groups(gram, weights, groups, 2, classes, quota=1)
    assert sorted(classes[g] for g in exact.removed) == [0, 1]
    assert exact.cost == pytest.approx(brute_force(gram, weights, groups, 2, classes, 1), rel=1e-9)


@pytest.mark.parametrize(("seed", "width", "count"), [(0, 1, 4), (1, 2, 3), (2, 3, 2), (5, 1, 8)])
def test_greedy_costs_at_least_the_exact_optimum_and_reports_its_own_schur_cost(seed, width, count):
    inputs, weights = instance(seed)
    gram, groups = inputs.T @ inputs, heads(12, width)
    greedy = greedy_groups(gram, weights, groups, count)
    assert greedy.cost >= exact_groups(gram, weights, groups, count).cost * (1 - 1e-9)
    assert greedy.cost == pytest.approx(schur_cost(gram, weights, columns_of(groups, greedy.removed)), rel=1e-8)
    prefix_costs = [schur_cost(gram, weights, columns_of(groups, greedy.removed[: k + 1])) for k in range(count)]
    np.testing.assert_allclose(greedy.steps, prefix_costs, rtol=1e-8)


def test_greedy_respects_the_per_class_quota():
    inputs, weights = instance(3)
    greedy = greedy_groups(inputs.T @ inputs, weights, heads(12, 2), 3, classes=[0, 0, 1, 1, 2, 2], quota=1)
    assert sorted([0, 0, 1, 1, 2, 2][g] for g in greedy.removed) == [0, 1, 2]


def test_wanda_scores_are_the_single_column_errors_without_refit():
    inputs, weights = instance(2)
    gram = inputs.T @ inputs
    scores = wanda_scores(gram, weights, heads(12, 1))
    np.testing.assert_allclose(scores, [unrefit_cost(gram, weights, np.array([c])) for c in range(12)], rtol=1e-10)
    assert lowest_scores(scores, 3) == tuple(int(i) for i in np.argsort(scores)[:3])


def test_removing_more_groups_than_exist_is_refused():
    inputs, weights = instance(0)
    with pytest.raises(PvqError, match="cannot remove 7 of 6 groups"):
        greedy_groups(inputs.T @ inputs, weights, heads(12, 2), 7)
    with pytest.raises(PvqError, match="quota"):
        lowest_scores(np.arange(4.0), 3, classes=[0, 0, 1, 1], quota=1)
