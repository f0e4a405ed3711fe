"""The multiple-choice knapsack: every item (a layer) takes exactly one of its options, minimising total damage
under a total cost budget.

Problem: items ℓ = 1..L, each with options o = 1..K_ℓ of integer cost w_ℓo ≥ 0 and damage d_ℓo; choose o(ℓ)
for every ℓ to

    minimise Σ_ℓ d_ℓ,o(ℓ)   subject to   Σ_ℓ w_ℓ,o(ℓ) ≤ C.

Two solvers over the same data:

* :func:`lagrangian_sweep` — the Lagrangian relaxation. For a multiplier λ ≥ 0 each item independently takes
  argmin_o d_ℓo + λ·w_ℓo, and g(λ) = Σ_ℓ min_o (d_ℓo + λ w_ℓo) − λ·C is a lower bound on the optimum for every
  λ (weak duality). Sweeping λ from +∞ down walks every item along the lower convex hull of its (cost, damage)
  points; taking hull upgrades in order of decreasing damage saved per unit cost until the next one does not fit
  gives a feasible allocation where all items sit at equal slope λ* (the equal-slope condition of rate
  allocation; Shoham & Gersho 1988, "Efficient bit allocation for an arbitrary set of quantizers"), and g(λ*)
  is the best Lagrangian bound (the LP relaxation's optimum).
* :func:`solve_knapsack` — the exact optimum by dynamic programming over the remaining budget, as in the
  per-layer compression DP of OBC (Frantar & Alistarh 2022, arXiv 2208.11580, Sec. 5): D_ℓ(c) = the least
  damage of items 1..ℓ within cost c, D_ℓ(c) = min_o D_ℓ−1(c − w_ℓo) + d_ℓo. Costs are exact integers; the DP
  first removes each item's cheapest cost from its options and from C and divides all costs and the remaining
  budget by their greatest common divisor (both leave the feasible set unchanged), so its table has
  L × (C' + 1) cells for the reduced remaining budget C'.

Pure math, no I/O. :class:`theory.errors.PvqError` for an infeasible budget or malformed input.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce

import numpy as np

from theory.errors import PvqError

MAX_DP_CELLS = 400_000_000
"""Largest DP table (items × reduced budget cells) :func:`solve_knapsack` builds (one byte per cell)."""


@dataclass(frozen=True)
class KnapsackSolution:
    """An allocation: ``choice[ℓ]`` = the option index of item ℓ, its total ``cost`` and ``damage``.

    ``lower_bound`` is the Lagrangian bound g(λ*) ≤ the optimum and ``slope`` the equal-slope multiplier λ*
    (damage per unit cost) of :func:`lagrangian_sweep`; ``exact`` says whether ``damage`` is the optimum
    (the DP) or the equal-slope hull allocation's (an upper bound on it).
    """

    choice: tuple[int, ...]
    cost: int
    damage: float
    lower_bound: float
    slope: float
    exact: bool


def _check(costs: Sequence[Sequence[int]], damages: Sequence[Sequence[float]], capacity: int) -> None:
    if len(costs) != len(damages) or not costs:
        raise PvqError(f"give costs and damages for the same items, at least one ({len(costs)} vs {len(damages)})")
    for item, (cost, damage) in enumerate(zip(costs, damages, strict=True)):
        if len(cost) != len(damage) or not cost:
            raise PvqError(
                f"item {item} needs as many costs as damages, at least one ({len(cost)} vs {len(damage)})"
            )
        if any(int(w) != w or w < 0 for w in cost):
            raise PvqError(f"item {item} has a cost that is not a non-negative integer: {list(cost)}")
        if not all(math.isfinite(d) for d in damage):
            raise PvqError(f"item {item} has a damage that is not finite: {list(damage)}")
    cheapest = sum(min(cost) for cost in costs)
    if cheapest > capacity:
        raise PvqError(
            f"the budget {capacity} is below the cheapest allocation ({cheapest}: every item at its cheapest "
            "option); raise the budget or add cheaper options"
        )


def lower_hull(cost: Sequence[int], damage: Sequence[float]) -> list[int]:
    """Indices of the options on the lower convex hull of the points (cost, damage), by increasing cost, from the
    cheapest (least damage among equal costs) to the least damaging; dominated options are left out."""
    order = sorted(range(len(cost)), key=lambda o: (cost[o], damage[o], o))
    frontier: list[int] = []
    for o in order:
        if frontier and damage[o] >= damage[frontier[-1]]:
            continue  # not cheaper than a point already kept and not less damaging
        while len(frontier) >= 2:
            a, b = frontier[-2], frontier[-1]
            # b lies on or above the segment a–o: drop it
            if (damage[b] - damage[a]) * (cost[o] - cost[a]) >= (damage[o] - damage[a]) * (cost[b] - cost[a]):
                frontier.pop()
            else:
                break
        frontier.append(o)
    return frontier


def lagrangian_bound(costs: Sequence[Sequence[int]], damages: Sequence[Sequence[float]], capacity: int,
                     slope: float) -> float:  # fmt: skip
    """g(λ) = Σ_ℓ min_o (d_ℓo + λ·w_ℓo) − λ·C, a lower bound on the optimum for every λ ≥ 0."""
    total = sum(min(d + slope * w for w, d in zip(cost, damage, strict=True))
                for cost, damage in zip(costs, damages, strict=True))  # fmt: skip
    return total - slope * capacity


def lagrangian_sweep(costs: Sequence[Sequence[int]], damages: Sequence[Sequence[float]],
                     capacity: int) -> KnapsackSolution:  # fmt: skip
    """The equal-slope hull allocation and the Lagrangian lower bound (module docstring).

    Every item starts at the first point of its hull; hull upgrades (segments) are taken in order of decreasing
    damage saved per unit cost while they fit; λ* is the slope of the first segment that does not fit (0 when all
    fit). ``exact`` is False: the allocation is feasible and its damage an upper bound on the optimum.
    """
    _check(costs, damages, capacity)
    hulls = [lower_hull(cost, damage) for cost, damage in zip(costs, damages, strict=True)]
    position = [0] * len(hulls)
    segments = []
    for item, hull in enumerate(hulls):
        cost, damage = costs[item], damages[item]
        for step, (a, b) in enumerate(itertools.pairwise(hull)):
            saved = (damage[a] - damage[b]) / (cost[b] - cost[a])
            segments.append((-saved, item, step))
    segments.sort()
    spent = sum(costs[item][hull[0]] for item, hull in enumerate(hulls))
    slope = 0.0
    for negative_saved, item, step in segments:
        hull = hulls[item]
        extra = costs[item][hull[step + 1]] - costs[item][hull[step]]
        if spent + extra > capacity:
            slope = -negative_saved
            break
        spent += extra
        position[item] += 1
    choice = tuple(hull[index] for hull, index in zip(hulls, position, strict=True))
    return KnapsackSolution(
        choice=choice, cost=spent, damage=_damage(damages, choice),
        lower_bound=lagrangian_bound(costs, damages, capacity, slope), slope=slope, exact=False,
    )  # fmt: skip


def _damage(damages: Sequence[Sequence[float]], choice: Sequence[int]) -> float:
    return float(math.fsum(damage[o] for damage, o in zip(damages, choice, strict=True)))


def solve_knapsack(costs: Sequence[Sequence[int]], damages: Sequence[Sequence[float]],
                   capacity: int) -> KnapsackSolution:  # fmt: skip
    """The exact optimum of the multiple-choice knapsack by the DP over the remaining budget (module docstring),
    with the Lagrangian bound and equal slope of :func:`lagrangian_sweep`. Ties go to the option listed first in
    the last item where they differ."""
    sweep = lagrangian_sweep(costs, damages, capacity)
    base = [min(cost) for cost in costs]
    extra = [[int(w) - floor for w in cost] for cost, floor in zip(costs, base, strict=True)]
    unit = reduce(math.gcd, (w for cost in extra for w in cost), 0) or 1
    extra = [[w // unit for w in cost] for cost in extra]
    budget = min((capacity - sum(base)) // unit, sum(max(cost) for cost in extra))
    cells = len(costs) * (budget + 1)
    if cells > MAX_DP_CELLS:
        raise PvqError(
            f"the exact allocation needs a table of {cells:.3g} cells (over {MAX_DP_CELLS:.3g}); use options "
            "whose costs share a larger common unit, or fewer items"
        )
    table = np.zeros(budget + 1)  # least damage of the items so far within each remaining budget
    picks = np.zeros((len(costs), budget + 1), dtype=np.int16)
    for item, (cost, damage) in enumerate(zip(extra, damages, strict=True)):
        best = np.full(budget + 1, np.inf)
        for option, (w, d) in enumerate(zip(cost, damage, strict=True)):
            if w > budget:
                continue
            candidate = np.full(budget + 1, np.inf)
            candidate[w:] = table[: budget + 1 - w] + d
            better = candidate < best
            best[better] = candidate[better]
            picks[item, better] = option
        table = best
    choice = []
    remaining = budget
    for item in range(len(costs) - 1, -1, -1):
        option = int(picks[item, remaining])
        choice.append(option)
        remaining -= extra[item][option]
    choice.reverse()
    spent = sum(int(cost[o]) for cost, o in zip(costs, choice, strict=True))
    return KnapsackSolution(
        choice=tuple(choice), cost=spent, damage=_damage(damages, choice), lower_bound=sweep.lower_bound,
        slope=sweep.slope, exact=True,
    )  # fmt: skip
