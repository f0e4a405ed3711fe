"""The multiple-choice knapsack solvers against brute force over every allocation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from theory.errors import PvqError
from theory.knapsack import lagrangian_bound, lagrangian_sweep, lower_hull, solve_knapsack


def random_menu(rng: np.random.Generator, items: int, options: int) -> tuple[list[list[int]], list[list[float]]]:
    """Integer costs (layer size × bits on a 1/8-bit grid, like a real menu) and positive damages."""
    sizes = rng.integers(1, 6, items)
    costs = [[int(size * bits) for bits in rng.integers(8, 129, options)] for size in sizes]
    damages = [list(rng.lognormal(0.0, 1.5, options)) for _ in range(items)]
    return costs, damages


def brute_force(costs: list[list[int]], damages: list[list[float]], capacity: int) -> float:
    """The least total damage over every feasible allocation (math.inf when none is feasible)."""
    best = math.inf
    for choice in itertools.product(*(range(len(cost)) for cost in costs)):
        if sum(cost[o] for cost, o in zip(costs, choice, strict=True)) <= capacity:
            best = min(best, math.fsum(damage[o] for damage, o in zip(damages, choice, strict=True)))
    return best


def budgets(costs: list[list[int]]) -> list[int]:
    """Budgets from exactly the cheapest allocation (tight) through the middle to above the dearest (loose)."""
    cheapest, dearest = sum(min(c) for c in costs), sum(max(c) for c in costs)
    spread = [cheapest, cheapest + 1, (2 * cheapest + dearest) // 3, (cheapest + dearest) // 2, dearest - 1]
    return [budget for budget in spread if budget >= cheapest] + [dearest + 5]


@pytest.mark.parametrize("seed", range(12))
def test_the_dp_reaches_the_brute_force_optimum_on_random_menus(seed):
    rng = np.random.default_rng(seed)
    costs, damages = random_menu(rng, int(rng.integers(1, 7)), int(rng.integers(1, 5)))
    for capacity in budgets(costs):
        solution = solve_knapsack(costs, damages, capacity)
        assert solution.exact
        assert math.isclose(solution.damage, brute_force(costs, damages, capacity), rel_tol=1e-12)
        assert solution.cost == sum(cost[o] for cost, o in zip(costs, solution.choice, strict=True)) <= capacity
        chosen = [damage[o] for damage, o in zip(damages, solution.choice, strict=True)]
        assert math.isclose(solution.damage, math.fsum(chosen))


@pytest.mark.parametrize("seed", range(12))
def test_the_lagrangian_bound_and_hull_allocation_bracket_the_optimum(seed):
    rng = np.random.default_rng(100 + seed)
    costs, damages = random_menu(rng, 6, 4)
    for capacity in budgets(costs):
        optimum = brute_force(costs, damages, capacity)
        sweep = lagrangian_sweep(costs, damages, capacity)
        assert not sweep.exact and sweep.cost <= capacity
        assert sweep.lower_bound <= optimum * (1 + 1e-12) and sweep.damage >= optimum * (1 - 1e-12)
        # weak duality holds for every multiplier, and the sweep's is the best on a grid of others
        for slope in np.geomspace(1e-6, 1e2, 25):
            assert lagrangian_bound(costs, damages, capacity, slope) <= optimum * (1 + 1e-12)
            assert lagrangian_bound(costs, damages, capacity, slope) <= sweep.lower_bound + 1e-9


def test_a_loose_budget_takes_every_least_damaging_option():
    costs, damages = [[1, 5, 9], [2, 4]], [[3.0, 1.0, 2.0], [5.0, 0.5]]
    solution = solve_knapsack(costs, damages, 100)
    assert solution.choice == (1, 1) and solution.damage == 1.5 and solution.slope == 0.0


def test_the_lower_hull_drops_dominated_and_concave_options():
    # (cost, damage): (0, 10), (1, 9.9) above the chord from (0, 10) to (2, 2), (2, 2), (3, 5) dominated, (4, 1)
    assert lower_hull([0, 1, 2, 3, 4], [10.0, 9.9, 2.0, 5.0, 1.0]) == [0, 2, 4]


def test_a_budget_below_the_cheapest_allocation_is_one_clear_error():
    with pytest.raises(PvqError, match="below the cheapest allocation"):
        solve_knapsack([[3, 5], [2, 4]], [[1.0, 0.0], [1.0, 0.0]], 4)


@pytest.mark.parametrize(
    ("costs", "damages", "match"),
    [([[1.5, 2]], [[1.0, 0.0]], "non-negative integer"), ([[1, 2]], [[1.0]], "as many costs as damages"),
     ([[1, 2]], [[math.nan, 0.0]], "not finite"), ([], [], "at least one")],
)  # fmt: skip
def test_malformed_menus_are_clear_errors(costs, damages, match):
    with pytest.raises(PvqError, match=match):
        solve_knapsack(costs, damages, 10)
