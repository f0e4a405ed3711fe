"""Structured pruning of a consuming layer: remove whole groups of input columns, refit the rest.

A linear layer y = x Wᵀ (W: rows × n) reads inputs X (t × n) with Gram H = XᵀX. Structured width pruning of the
layer that *produces* those inputs (an MLP channel, an attention head) deletes a group of input columns C of
the consuming layer (down_proj, o_proj); the kept columns K may be refit by least squares. This is the per-layer
problem of Kuzmin et al. (2023, arXiv 2307.02973, Sec. 4) with whole columns instead of single weights:

* refit: Ŵ_K = W_K + W_C H_CK H_KK⁻¹ (normal equations of min ‖X_K Ŵ_Kᵀ − X Wᵀ‖²_F);
* its error: Σ_rows w_Cᵀ (H/H_KK) w_C = tr(W_C S W_Cᵀ) with the Schur complement S = H_CC − H_CK H_KK⁻¹ H_KC
  = ((H⁻¹)_CC)⁻¹ (Optimal Brain Surgeon for a block of weights, Hassibi & Stork 1993; Kurtic et al. 2022,
  arXiv 2203.07259, Eq. 6);
* without refit: tr(W_C H_CC W_Cᵀ) ≥ the refit error (the refit is the minimiser over Ŵ_K).

The refit error E(C) is monotone (C ⊆ C' ⇒ E(C) ≤ E(C'): fewer free columns to refit), so a branch-and-bound
that extends a removed set only while E stays below the incumbent is exact (leaps and bounds, Furnival & Wilson
1974, as in :mod:`theory.sparse_least_squares`). The greedy choice removes one group at a time, the one of least
added error given the groups already removed, updating Ŵ and Σ = H_FF⁻¹ of the free columns F by the block OBS
step: added error tr(Ŵ_g Σ_gg⁻¹ Ŵ_gᵀ), Ŵ ← Ŵ − Ŵ_g Σ_gg⁻¹ Σ_g·, Σ ← Σ − Σ_·g Σ_gg⁻¹ Σ_g·.

Groups may carry a class (e.g. the KV group of a query head) with a quota: at most ``quota`` groups of each class
are removed, so every class keeps the same structure when each loses exactly ``quota``.
H must be positive definite (damp a calibration Gram first, :func:`theory.chunk_problem.damped_gram`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from theory.errors import PvqError


@dataclass(frozen=True)
class GroupSelection:
    """Removed groups (indices into the group list, in removal order for greedy) and the refit error E(C).

    ``steps`` holds the error after each greedy removal (E of every prefix); exact selections give one entry.
    """

    removed: tuple[int, ...]
    cost: float
    steps: tuple[float, ...]
    method: str


def columns_of(groups: Sequence[Sequence[int]], chosen: Sequence[int]) -> np.ndarray:
    """The sorted input columns of the chosen groups."""
    if not chosen:
        return np.zeros(0, dtype=int)
    return np.sort(np.concatenate([np.asarray(groups[g], dtype=int) for g in chosen]))


def _split(size: int, removed: np.ndarray) -> np.ndarray:
    kept = np.ones(size, dtype=bool)
    kept[removed] = False
    return np.flatnonzero(kept)


def quadratic_trace(weights: np.ndarray, gram: np.ndarray) -> float:
    """tr(W H Wᵀ) = Σ_rows wᵀ H w, by one matrix product."""
    return float(((weights @ gram) * weights).sum())


def refit_weights(gram: np.ndarray, weights: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Ŵ_K = W_K + W_C H_CK H_KK⁻¹: the least-squares weights (rows × |K|) of the kept columns, in column order."""
    kept = _split(weights.shape[1], removed)
    if kept.size == 0:
        return np.zeros((weights.shape[0], 0))
    correction = np.linalg.solve(gram[np.ix_(kept, kept)], gram[np.ix_(kept, removed)] @ weights[:, removed].T)
    return weights[:, kept] + correction.T


def schur_cost(gram: np.ndarray, weights: np.ndarray, removed: np.ndarray) -> float:
    """E(C) = Σ_rows w_Cᵀ (H/H_KK) w_C, the output error ‖X(Ŵ − W)ᵀ‖²_F after removing C and refitting K."""
    if removed.size == 0:
        return 0.0
    kept = _split(weights.shape[1], removed)
    schur = gram[np.ix_(removed, removed)]
    if kept.size:
        schur = schur - gram[np.ix_(removed, kept)] @ np.linalg.solve(
            gram[np.ix_(kept, kept)], gram[np.ix_(kept, removed)]
        )
    part = weights[:, removed]
    return quadratic_trace(part, schur)


def unrefit_cost(gram: np.ndarray, weights: np.ndarray, removed: np.ndarray) -> float:
    """tr(W_C H_CC W_Cᵀ): the output error of removing C with the kept columns unchanged."""
    part = weights[:, removed]
    return quadratic_trace(part, gram[np.ix_(removed, removed)])


def magnitude_scores(weights: np.ndarray, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """Σ_{c ∈ g} ‖W_{:,c}‖²: the squared Frobenius norm of each group's consumer columns."""
    energy = (weights**2).sum(axis=0)
    return np.array([energy[np.asarray(g, dtype=int)].sum() for g in groups])


def wanda_scores(gram: np.ndarray, weights: np.ndarray, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """Σ_{c ∈ g} ‖W_{:,c}‖² H_cc: Wanda's |W_ij|·‖X_j‖ squared and summed over the group (Sun et al., ICLR 2024;
    the error of removing each column alone, cross terms dropped)."""
    energy = (weights**2).sum(axis=0) * np.diag(gram)
    return np.array([energy[np.asarray(g, dtype=int)].sum() for g in groups])


def lowest_scores(scores: np.ndarray, count: int, classes: Sequence[int] | None = None, quota: int | None = None
                  ) -> tuple[int, ...]:  # fmt: skip
    """The ``count`` groups of lowest score (ties by index), at most ``quota`` per class when classes are given."""
    taken: dict[int, int] = {}
    chosen: list[int] = []
    for group in (int(g) for g in np.argsort(scores, kind="stable")):
        if len(chosen) == count:
            break
        if _allowed(group, taken, classes, quota):
            chosen.append(group)
            if classes is not None:
                taken[classes[group]] = taken.get(classes[group], 0) + 1
    _check_count(len(chosen), count)
    return tuple(chosen)


def _check_count(found: int, count: int) -> None:
    if found != count:
        raise PvqError(f"cannot remove {count} groups under the per-class quota (only {found} allowed)")


def _check(gram: np.ndarray, weights: np.ndarray, groups: Sequence[Sequence[int]], count: int) -> None:
    if gram.shape != (weights.shape[1], weights.shape[1]):
        raise PvqError(f"the Gram is {gram.shape}, the weights have {weights.shape[1]} input columns")
    if not 0 <= count <= len(groups):
        raise PvqError(f"cannot remove {count} of {len(groups)} groups; choose 0..{len(groups)}")


def _allowed(group: int, taken: dict[int, int], classes: Sequence[int] | None, quota: int | None) -> bool:
    return classes is None or quota is None or taken.get(classes[group], 0) < quota


def greedy_groups(
    gram: np.ndarray, weights: np.ndarray, groups: Sequence[Sequence[int]], count: int,
    classes: Sequence[int] | None = None, quota: int | None = None,
) -> GroupSelection:  # fmt: skip
    """Backward elimination with block OBS updates (module docstring): ``count`` groups, least added error
    first; at most ``quota`` per class when ``classes`` are given."""
    _check(gram, weights, groups, count)
    if all(len(g) == 1 for g in groups):
        return _greedy_columns(gram, weights, [int(g[0]) for g in groups], count, classes, quota)
    free = np.arange(weights.shape[1])
    refit = weights.astype(np.float64).copy()
    covariance = np.linalg.inv(gram)
    position = {column: index for index, column in enumerate(free)}
    remaining = list(range(len(groups)))
    removed: list[int] = []
    steps: list[float] = []
    taken: dict[int, int] = {}
    total = 0.0
    for _ in range(count):
        candidates = [g for g in remaining if _allowed(g, taken, classes, quota)]
        if not candidates:
            _check_count(len(removed), count)
        places = [np.array([position[c] for c in groups[g]]) for g in candidates]
        added = np.array([_block_saliency(refit, covariance, p) for p in places])
        best = int(np.argmin(added))
        group, place = candidates[best], places[best]
        refit, covariance = _obs_remove(refit, covariance, place)
        keep = np.ones(free.size, dtype=bool)
        keep[place] = False
        free = free[keep]
        position = {column: index for index, column in enumerate(free)}
        total += float(added[best])
        removed.append(group)
        remaining.remove(group)
        steps.append(total)
        if classes is not None:
            taken[classes[group]] = taken.get(classes[group], 0) + 1
    return GroupSelection(tuple(removed), total, tuple(steps), "greedy")


def _greedy_columns(
    gram: np.ndarray, weights: np.ndarray, columns: list[int], count: int, classes: Sequence[int] | None,
    quota: int | None,
) -> GroupSelection:  # fmt: skip
    """:func:`greedy_groups` for single-column groups in low-rank form: after t removals Σ = Σ₀ − F Fᵀ (F's column
    for a removal of j: Σ_·j / √Σ_jj) and Ŵ = W − A Cᵀ (A's column Ŵ_·j / Σ_jj, C's column Σ_·j), and the column
    energies e_k = ‖Ŵ_·k‖² follow e ← e − 2 c ⊙ (aᵀŴ) + ‖a‖² c², so a step costs matrix-vector products only."""
    size = weights.shape[1]
    initial = np.linalg.inv(gram)
    weights = weights.astype(np.float64)
    sigma_factors, row_factors, column_factors = (np.zeros((count, n)) for n in (size, weights.shape[0], size))
    variances = np.diag(initial).copy()
    energies = (weights**2).sum(axis=0)
    group_of = {column: group for group, column in enumerate(columns)}
    eligible = np.zeros(size, dtype=bool)
    eligible[columns] = True
    taken: dict[int, int] = {}
    removed: list[int] = []
    steps: list[float] = []
    total = 0.0
    for t in range(count):
        allowed = eligible.copy()
        if classes is not None and quota is not None:
            allowed[[c for c in columns if taken.get(classes[group_of[c]], 0) >= quota]] = False
        if not allowed.any():
            _check_count(len(removed), count)
        added = np.full(size, np.inf)
        added[allowed] = energies[allowed] / variances[allowed]
        j = int(np.argmin(added))
        sigma = initial[:, j] - sigma_factors[:t, j] @ sigma_factors[:t]
        scale = (weights[:, j] - column_factors[:t, j] @ row_factors[:t]) / sigma[j]
        projected = scale @ weights - (row_factors[:t] @ scale) @ column_factors[:t]
        energies += (scale @ scale) * sigma**2 - 2 * sigma * projected
        row_factors[t], column_factors[t] = scale, sigma
        sigma_factors[t] = sigma / np.sqrt(sigma[j])
        variances -= sigma_factors[t] ** 2
        eligible[j] = False
        total += float(added[j])
        removed.append(group_of[j])
        steps.append(total)
        if classes is not None:
            taken[classes[group_of[j]]] = taken.get(classes[group_of[j]], 0) + 1
    return GroupSelection(tuple(removed), total, tuple(steps), "greedy")


def _block_saliency(refit: np.ndarray, covariance: np.ndarray, place: np.ndarray) -> float:
    """tr(Ŵ_g Σ_gg⁻¹ Ŵ_gᵀ): the added error of removing the columns ``place`` of the current refit."""
    part = refit[:, place]
    return float(np.einsum("rc,rc->", part, np.linalg.solve(covariance[np.ix_(place, place)], part.T).T))


def _obs_remove(refit: np.ndarray, covariance: np.ndarray, place: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Block OBS: Ŵ ← Ŵ − Ŵ_g Σ_gg⁻¹ Σ_g·, Σ ← Σ − Σ_·g Σ_gg⁻¹ Σ_g·, then drop the columns ``place``."""
    block = covariance[np.ix_(place, place)]
    rows = covariance[place]
    refit = refit - refit[:, place] @ np.linalg.solve(block, rows)
    covariance = covariance - rows.T @ np.linalg.solve(block, rows)
    keep = np.ones(refit.shape[1], dtype=bool)
    keep[place] = False
    return refit[:, keep], covariance[np.ix_(keep, keep)]


def exact_groups(
    gram: np.ndarray, weights: np.ndarray, groups: Sequence[Sequence[int]], count: int,
    classes: Sequence[int] | None = None, quota: int | None = None, max_nodes: int = 200_000,
) -> GroupSelection:  # fmt: skip
    """The ``count`` groups of least refit error E(C), exactly: depth-first over removed sets in index order,
    a branch cut as soon as E of its removed set reaches the incumbent (E is monotone), greedy as the first
    incumbent. PvqError when more than ``max_nodes`` sets would be evaluated (use :func:`greedy_groups`)."""
    _check(gram, weights, groups, count)
    incumbent = greedy_groups(gram, weights, groups, count, classes, quota)
    best = [incumbent.cost, incumbent.removed]
    nodes = [0]

    def extend(chosen: tuple[int, ...], start: int, taken: dict[int, int]) -> None:
        if len(chosen) == count:
            cost = schur_cost(gram, weights, columns_of(groups, chosen))
            if cost < best[0]:
                best[0], best[1] = cost, chosen
            return
        for group in range(start, len(groups) - (count - len(chosen)) + 1):
            if not _allowed(group, taken, classes, quota):
                continue
            nodes[0] += 1
            if nodes[0] > max_nodes:
                raise PvqError(f"exact group selection passed {max_nodes} nodes; use the greedy selection")
            subset = (*chosen, group)
            if len(subset) < count and schur_cost(gram, weights, columns_of(groups, subset)) >= best[0]:
                continue
            counts = dict(taken)
            if classes is not None:
                counts[classes[group]] = counts.get(classes[group], 0) + 1
            extend(subset, group + 1, counts)

    extend((), 0, {})
    removed = tuple(sorted(best[1]))
    return GroupSelection(removed, float(best[0]), (float(best[0]),), "exact")
