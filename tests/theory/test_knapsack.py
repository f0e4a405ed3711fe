"""The multiple-choice knapsack solvers against brute force over every allocation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from theory.errors import PvqError
from theory.knapsack import RemovableGroup, lagrangian_bound, lagrangian_sweep, lower_hull, solve_knapsack


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


def brute_force_with_groups(costs: list[list[int]], damages: list[list[float]], capacity: int,
                            groups: list[RemovableGroup]) -> float:  # fmt: skip
    """The least total damage over every allocation and every subset of the groups replaced whole."""
    best = math.inf
    for replaced in itertools.product((False, True), repeat=len(groups)):
        gone = {
            i
            for group, out in zip(groups, replaced, strict=True)
            if out
            for i in range(group.first, group.last + 1)
        }
        fixed_cost = sum(group.cost for group, out in zip(groups, replaced, strict=True) if out)
        fixed_damage = [group.damage for group, out in zip(groups, replaced, strict=True) if out]
        kept = [i for i in range(len(costs)) if i not in gone]
        for choice in itertools.product(*(range(len(costs[i])) for i in kept)):
            cost = fixed_cost + sum(costs[i][o] for i, o in zip(kept, choice, strict=True))
            if cost <= capacity:
                damage = math.fsum(fixed_damage + [damages[i][o] for i, o in zip(kept, choice, strict=True)])
                best = min(best, damage)
    return best


@pytest.mark.parametrize("seed", range(16))
def test_the_dp_with_removable_groups_reaches_the_brute_force_optimum(seed):
    """Block removal: runs of items replaced whole (cost 0 or small, damage drawn like an option's)."""
    rng = np.random.default_rng(500 + seed)
    items = int(rng.integers(2, 7))
    costs, damages = random_menu(rng, items, int(rng.integers(1, 4)))
    cuts = sorted(rng.choice(np.arange(1, items), size=min(2, items - 1), replace=False).tolist())
    runs = list(itertools.pairwise([0, *cuts, items]))
    groups = [RemovableGroup(first, last - 1, int(rng.integers(0, 3)) * (seed % 2), float(rng.lognormal(1.0, 1.0)))
              for first, last in runs if rng.random() < 0.8]  # fmt: skip
    cheapest = sum(min(c) for c in costs)
    for capacity in sorted({0, cheapest // 3, cheapest // 2, *budgets(costs)}):
        optimum = brute_force_with_groups(costs, damages, capacity, groups)
        if math.isinf(optimum):
            with pytest.raises(PvqError, match="below the cheapest allocation"):
                solve_knapsack(costs, damages, capacity, groups)
            continue
        solution = solve_knapsack(costs, damages, capacity, groups)
        assert math.isclose(solution.damage, optimum, rel_tol=1e-12), (capacity, solution)
        gone = {i for g in solution.removed for i in range(groups[g].first, groups[g].last + 1)}
        assert {i for i, o in enumerate(solution.choice) if o < 0} == gone
        spent = sum(costs[i][o] for i, o in enumerate(solution.choice) if o >= 0)
        assert solution.cost == spent + sum(groups[g].cost for g in solution.removed) <= capacity
        assert solution.lower_bound <= optimum * (1 + 1e-12)
        for slope in np.geomspace(1e-6, 1e2, 9):
            assert lagrangian_bound(costs, damages, capacity, slope, groups) <= optimum * (1 + 1e-12)


def test_a_group_is_removed_only_when_it_pays():
    """Two items of one group: removing it (damage 1) beats keeping both at their cheap options (damage 2 + 2)
    under a tight budget, and loses to the dear options (damage 0) under a loose one."""
    costs, damages = [[1, 5], [1, 5]], [[2.0, 0.0], [2.0, 0.0]]
    group = [RemovableGroup(0, 1, 0, 1.0)]
    assert solve_knapsack(costs, damages, 2, group).removed == (0,)
    assert solve_knapsack(costs, damages, 0, group).choice == (-1, -1)
    loose = solve_knapsack(costs, damages, 10, group)
    assert loose.removed == () and loose.choice == (1, 1) and loose.damage == 0.0


@pytest.mark.parametrize("group", [RemovableGroup(1, 0, 0, 1.0), RemovableGroup(0, 5, 0, 1.0),
                                   RemovableGroup(0, 0, -1, 1.0), RemovableGroup(0, 0, 0, math.inf)])  # fmt: skip
def test_malformed_groups_are_clear_errors(group):
    with pytest.raises(PvqError, match="removable group"):
        solve_knapsack([[1, 2], [1, 2]], [[1.0, 0.0], [1.0, 0.0]], 10, [group])
