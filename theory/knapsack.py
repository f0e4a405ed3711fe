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

Removable groups (block removal): a group is a run of consecutive items that may instead be replaced whole by
one alternative of cost w_g and damage d_g (a decoder block removed: its layers cost nothing, the damage is the
block's). The DP stays exact: after the group's last item, D(c) = min(D_kept(c), D_before(c − w_g) + d_g), with
D_before the table before the group's first item; items of removable groups keep their full costs (no cheapest
cost is subtracted from them) so every cost stays non-negative. The Lagrangian bound becomes
g(λ) = Σ_groups min(Σ_ℓ∈g min_o (d_ℓo + λ w_ℓo), d_g + λ w_g) + Σ_other items min_o (d_ℓo + λ w_ℓo) − λ·C, still
a lower bound for every λ ≥ 0; it is reported at the equal slope λ* of the problem without the groups.

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
class RemovableGroup:
    """Items ``first`` .. ``last`` (inclusive, consecutive) may be replaced whole by one alternative of integer
    ``cost`` ≥ 0 and finite ``damage`` (module docstring)."""

    first: int
    last: int
    cost: int
    damage: float


@dataclass(frozen=True)
class KnapsackSolution:
    """An allocation: ``choice[ℓ]`` = the option index of item ℓ (−1 for an item of a removed group), its total
    ``cost`` and ``damage``; ``removed`` = indices of the removable groups replaced whole.

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
    removed: tuple[int, ...] = ()


def _check_groups(groups: Sequence[RemovableGroup], items: int) -> None:
    previous = -1
    for index, group in enumerate(groups):
        if not previous < group.first <= group.last < items:
            raise PvqError(
                f"removable group {index} covers items {group.first}..{group.last}; groups must be ordered, "
                f"disjoint runs of items within 0..{items - 1}"
            )
        if int(group.cost) != group.cost or group.cost < 0 or not math.isfinite(group.damage):
            raise PvqError(f"removable group {index} needs a non-negative integer cost and a finite damage")
        previous = group.last


def _cheapest(costs: Sequence[Sequence[int]], groups: Sequence[RemovableGroup] = ()) -> int:
    """The cost of the cheapest allocation: each item at its cheapest option, or a group replaced when cheaper."""
    total = sum(min(cost) for cost in costs)
    for group in groups:
        kept = sum(min(costs[item]) for item in range(group.first, group.last + 1))
        total -= max(kept - int(group.cost), 0)
    return total


def _check(costs: Sequence[Sequence[int]], damages: Sequence[Sequence[float]], capacity: int,
           groups: Sequence[RemovableGroup] = ()) -> None:  # fmt: skip
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
    _check_groups(groups, len(costs))
    cheapest = _cheapest(costs, groups)
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
                     slope: float, groups: Sequence[RemovableGroup] = ()) -> float:  # fmt: skip
    """g(λ) = Σ_ℓ min_o (d_ℓo + λ·w_ℓo) − λ·C, a lower bound on the optimum for every λ ≥ 0 (with removable
    groups, each group contributes the lesser of its items' sum and its alternative's d_g + λ·w_g)."""
    item = [min(d + slope * w for w, d in zip(cost, damage, strict=True))
            for cost, damage in zip(costs, damages, strict=True)]  # fmt: skip
    total = math.fsum(item)
    for group in groups:
        kept = math.fsum(item[group.first : group.last + 1])
        total -= max(kept - (group.damage + slope * group.cost), 0.0)
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


def solve_knapsack(costs: Sequence[Sequence[int]], damages: Sequence[Sequence[float]], capacity: int,
                   groups: Sequence[RemovableGroup] = ()) -> KnapsackSolution:  # fmt: skip
    """The exact optimum of the multiple-choice knapsack by the DP over the remaining budget (module docstring),
    with the Lagrangian bound and equal slope of :func:`lagrangian_sweep`; ``groups``: runs of items that may be
    replaced whole (block removal). Ties go to the option listed first in the last item where they differ, and to
    keeping a group over replacing it."""
    _check(costs, damages, capacity, groups)
    grouped = {item for group in groups for item in range(group.first, group.last + 1)}
    sweep = lagrangian_sweep(costs, damages, max(capacity, sum(min(cost) for cost in costs)))
    base = [0 if item in grouped else min(cost) for item, cost in enumerate(costs)]
    extra = [[int(w) - floor for w in cost] for cost, floor in zip(costs, base, strict=True)]
    unit = reduce(math.gcd, [w for cost in extra for w in cost] + [int(g.cost) for g in groups], 0) or 1
    extra = [[w // unit for w in cost] for cost in extra]
    replaced = [int(group.cost) // unit for group in groups]
    budget = min((capacity - sum(base)) // unit, sum(max(cost) for cost in extra))
    cells = len(costs) * (budget + 1)
    if cells > MAX_DP_CELLS:
        raise PvqError(
            f"the exact allocation needs a table of {cells:.3g} cells (over {MAX_DP_CELLS:.3g}); use options "
            "whose costs share a larger common unit, or fewer items"
        )
    starts = {group.first: index for index, group in enumerate(groups)}
    ends = {group.last: index for index, group in enumerate(groups)}
    table = np.zeros(budget + 1)  # least damage of the items so far within each remaining budget
    picks = np.zeros((len(costs), budget + 1), dtype=np.int16)
    replace = np.zeros((len(groups), budget + 1), dtype=bool)
    before = table
    for item, (cost, damage) in enumerate(zip(extra, damages, strict=True)):
        if item in starts:
            before = table
        best = np.full(budget + 1, np.inf)
        for option, (w, d) in enumerate(zip(cost, damage, strict=True)):
            if w > budget:
                continue
            candidate = np.full(budget + 1, np.inf)
            candidate[w:] = table[: budget + 1 - w] + d
            better = candidate < best
            best[better] = candidate[better]
            picks[item, better] = option
        if item in ends:
            group = ends[item]
            w = replaced[group]
            if w <= budget:
                alternative = np.full(budget + 1, np.inf)
                alternative[w:] = before[: budget + 1 - w] + groups[group].damage
                replace[group] = alternative < best
                best = np.where(replace[group], alternative, best)
        table = best
    choice = [0] * len(costs)
    removed = []
    remaining = budget
    item = len(costs) - 1
    while item >= 0:
        group = ends.get(item)
        if group is not None and replace[group, remaining]:
            removed.append(group)
            remaining -= replaced[group]
            for member in range(groups[group].first, item + 1):
                choice[member] = -1
            item = groups[group].first - 1
            continue
        option = int(picks[item, remaining])
        choice[item] = option
        remaining -= extra[item][option]
        item -= 1
    removed.reverse()
    spent = sum(int(cost[o]) for cost, o in zip(costs, choice, strict=True) if o >= 0)
    spent += sum(int(groups[group].cost) for group in removed)
    damage = math.fsum([damages[i][o] for i, o in enumerate(choice) if o >= 0]
                       + [groups[group].damage for group in removed])  # fmt: skip
    return KnapsackSolution(
        choice=tuple(choice), cost=spent, damage=damage,
        lower_bound=lagrangian_bound(costs, damages, capacity, sweep.slope, groups),
        slope=sweep.slope, exact=True, removed=tuple(removed),
    )  # fmt: skip
