"""Which channels or heads of a unit go, and the refit of the consuming layer, from the consumer's input Gram.

The consumer (down / fc2 of an MLP, o of an attention) reads inputs X with Gram H = XᵀX; removing a group of its
input columns C and refitting the kept ones costs E(C) = Σ_rows w_Cᵀ (H/H_KK) w_C (:mod:`theory.group_pruning`).
Scores (``SCORES``): ``output`` minimises E(C) (exact branch-and-bound over at most :data:`EXACT_MAX_GROUPS`
groups, greedy block OBS above), ``wanda`` removes the groups of least Σ_c ‖W_:c‖² H_cc, ``magnitude`` those of
least Σ_c ‖W_:c‖². Every solve uses the damped Gram H + δI (δ = 1 % of the mean diagonal,
:func:`theory.chunk_problem.damped_gram`); the refit minimises E_H + δ‖Ŵ_K − W_K‖², so its undamped error never
exceeds that of the unchanged kept columns. Reported errors use the undamped H.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from theory.chunk_problem import DEFAULT_RELATIVE_DAMPING, damped_gram
from theory.errors import PvqError
from theory.group_pruning import (
    columns_of,
    exact_groups,
    greedy_groups,
    lowest_scores,
    magnitude_scores,
    quadratic_trace,
    refit_weights,
    unrefit_cost,
    wanda_scores,
)

SCORES = ("output", "wanda", "magnitude")
EXACT_MAX_GROUPS = 16
"""Group counts up to which the output score selects exactly (attention heads); above it, greedily (channels)."""


@dataclass(frozen=True)
class GroupChoice:
    """The removed groups of one unit, the consumer's removed columns, and its output errors (undamped Gram):
    ``refit_error`` after the least-squares refit, ``unrefit_error`` with the kept columns unchanged, ``signal``
    tr(W H Wᵀ), all squared-output sums over the calibration tokens."""

    removed_groups: tuple[int, ...]
    removed_columns: np.ndarray
    refit_error: float
    unrefit_error: float
    signal: float


def check_score(score: str) -> None:
    if score not in SCORES:
        raise PvqError(f"unknown score {score!r}; choose one of {', '.join(SCORES)}")


def choose_groups(
    gram: np.ndarray | None, weights: np.ndarray, groups: list[list[int]], count: int, score: str,
    classes: list[int] | None = None, quota: int | None = None,
) -> GroupChoice:  # fmt: skip
    """Remove ``count`` of ``groups`` (input columns of ``weights``, rows × n) by ``score``, at most ``quota`` per
    class. ``gram`` may be None only for the magnitude score (errors are then NaN)."""
    check_score(score)
    if gram is None and score != "magnitude":
        raise PvqError(f"the {score} score reads the consumer's input Gram; pass calibration batches")
    damped = None if gram is None else damped_gram(gram, DEFAULT_RELATIVE_DAMPING)[0]
    if count == 0:
        removed: tuple[int, ...] = ()
    elif score == "magnitude":
        removed = lowest_scores(magnitude_scores(weights, groups), count, classes, quota)
    elif score == "wanda":
        removed = lowest_scores(wanda_scores(gram, weights, groups), count, classes, quota)
    elif len(groups) <= EXACT_MAX_GROUPS:
        removed = exact_groups(damped, weights, groups, count, classes, quota).removed
    else:
        removed = greedy_groups(damped, weights, groups, count, classes, quota).removed
    columns = columns_of(groups, sorted(removed))
    if gram is None:
        return GroupChoice(tuple(sorted(removed)), columns, np.nan, np.nan, np.nan)
    refit = full_refit(gram, weights, columns)
    difference = refit - weights
    return GroupChoice(
        removed_groups=tuple(sorted(removed)),
        removed_columns=columns,
        refit_error=quadratic_trace(difference, gram),
        unrefit_error=unrefit_cost(gram, weights, columns),
        signal=quadratic_trace(weights, gram),
    )


def full_refit(gram: np.ndarray, weights: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """``weights`` with the removed columns zeroed and the kept ones refit on the damped Gram."""
    result = np.zeros_like(weights, dtype=np.float64)
    kept = np.setdiff1d(np.arange(weights.shape[1]), removed)
    result[:, kept] = refit_weights(damped_gram(gram, DEFAULT_RELATIVE_DAMPING)[0], weights, removed)
    return result
