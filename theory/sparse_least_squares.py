"""Pruning one row chunk: exact best-subset branch-and-bound, OBS refit, and the heuristic masks.

The chunk problem (Kuzmin et al. 2023, Sec. 4) keeps at most k of n weights and refits them:

    min_{m ∈ {0,1}ⁿ, Σm ≤ k}  min_{ŵ}  (m⊙ŵ − w)ᵀ H (m⊙ŵ − w),     optionally |ŵ_j| ≤ C.

For a zeroed set T (kept set S = complement) the optimal refit is ``ŵ_S = w_S + H_SS⁻¹ H_ST w_T`` and the
error is the Schur-complement form ``E(T) = w_Tᵀ ((H⁻¹)_TT)⁻¹ w_T`` (Optimal Brain Surgeon, Hassibi &
Stork 1993). Zeroing one more weight j of the current refit ``ŵ`` costs exactly ``ŵ_j² / (H_free⁻¹)_jj``
(its OBS saliency). ``E`` is monotone: ``T ⊆ T' ⇒ E(T) <= E(T')`` (fewer free weights to refit), so the
optimum keeps exactly k weights and a node's forced zeros give a valid lower bound (leaps and bounds,
Furnival & Wilson 1974). The same holds with the box ``|ŵ| <= C`` (Kuzmin et al. use ``C = 2·max|w|``).
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import lsq_linear

from theory.chunk_problem import ChunkProblem, SolverResult, check_kept
from theory.errors import PvqError, choose

PAPER_BOX_FACTOR = 2.0
SPARSEGPT_BLOCK = 128
TIME_CHECK_INTERVAL = 64

Pruner = Callable[[ChunkProblem, int], tuple[np.ndarray, np.ndarray]]


def paper_box(weights: np.ndarray, factor: float = PAPER_BOX_FACTOR) -> float:
    """The box ``C = c·max|w|`` on refitted weights (Kuzmin et al. 2023, Sec. 4: c = 2)."""
    if not (math.isfinite(factor) and factor > 0):
        raise PvqError(f"the box factor must be a finite number > 0, got {factor!r}")
    return factor * float(np.abs(np.asarray(weights, dtype=np.float64)).max())


def check_box(box: float | None) -> None:
    """Raise a clear error unless the box is None or a finite number > 0."""
    if box is not None and not (isinstance(box, int | float) and math.isfinite(box) and box > 0):
        raise PvqError(f"the refit box must be None or a finite number > 0, got {box!r}")


def refit(problem: ChunkProblem, mask: np.ndarray, box: float | None = None) -> np.ndarray:
    """Optimal weights on the kept support ``mask``: ``ŵ_S = w_S + H_SS⁻¹ H_ST w_T``, zeros elsewhere.

    With a box ``|ŵ| <= C`` it is the bounded least-squares problem ``min ‖R_S ŵ_S − R w‖²`` (H = RᵀR),
    solved by ``scipy.optimize.lsq_linear``.
    """
    check_box(box)
    kept = np.flatnonzero(mask)
    refitted = np.zeros(problem.size)
    if kept.size == 0:
        return refitted
    zeroed = np.flatnonzero(~np.asarray(mask, dtype=bool))
    gram, weights = problem.gram, problem.weights
    free = weights[kept] + np.linalg.solve(gram[np.ix_(kept, kept)], gram[np.ix_(kept, zeroed)] @ weights[zeroed])
    if box is not None and np.abs(free).max() > box:
        factor = np.linalg.cholesky(gram).T
        free = lsq_linear(factor[:, kept], factor @ weights, bounds=(-box, box), method="bvls", tol=1e-14).x
    refitted[kept] = free
    return refitted


def pruned_result(
    problem: ChunkProblem, mask: np.ndarray, weights: np.ndarray, method: str, start: float,
    status: str = "heuristic", lower_bound: float = 0.0, nodes: int = 0,
) -> SolverResult:
    """Package a mask and its weights as a :class:`SolverResult` (value = error of the weights)."""
    mask = np.asarray(mask, dtype=bool)
    solution = np.where(mask, weights, 0.0)
    value = problem.error(solution)
    return SolverResult(
        method=method, value=value, solution=solution, code=mask, status=status,
        lower_bound=min(lower_bound, value), nodes=nodes,
        seconds=time.perf_counter() - start,
    )


def top_k_mask(scores: np.ndarray, kept: int) -> np.ndarray:
    """Boolean mask of the ``kept`` LARGEST scores (ties broken by index)."""
    mask = np.zeros(scores.shape[0], dtype=bool)
    mask[np.argsort(-scores, kind="stable")[:kept]] = True
    return mask


def magnitude_mask(problem: ChunkProblem, kept: int) -> np.ndarray:
    """Keep the k largest ``|w_j|`` (magnitude pruning; the largest, not the paper example's smallest)."""
    return top_k_mask(np.abs(problem.weights), kept)


def wanda_mask(problem: ChunkProblem, kept: int) -> np.ndarray:
    """Keep the k largest ``|w_j|·‖X_j‖₂ = |w_j|·sqrt(H_jj)`` (the Wanda score, Sun et al., ICLR 2024).

    Wanda compares weights within one output row, so on a chunk it ranks the chunk's weights.
    """
    return top_k_mask(np.abs(problem.weights) * np.sqrt(np.diag(problem.gram)), kept)


def sparsegpt_prune(
    problem: ChunkProblem, kept: int, block_size: int = SPARSEGPT_BLOCK
) -> tuple[np.ndarray, np.ndarray]:
    """SparseGPT on one row (Frantar & Alistarh, ICML 2023, Alg. 1): ``(mask, updated weights)``.

    ``U`` is the upper Cholesky factor of ``H⁻¹``. At the start of each block of ``block_size`` columns
    the mask is chosen by the smallest ``w_j² / U_jj²`` of the current (updated) weights, pruning
    ``n − k`` weights in proportion to the block's share; then columns are processed in order, a pruned
    column j feeding its error back as ``w_{j:} −= w_j/U_jj · U_{j,j:}`` (kept weights are not rounded).
    SparseGPT ranks a block's scores over all rows of the layer at once; a single row ranks its own.
    """
    size = problem.size
    check_kept(size, kept)
    upper = np.linalg.cholesky(np.linalg.inv(problem.gram)).T
    weights = problem.weights.copy()
    mask = np.ones(size, dtype=bool)
    to_prune = size - kept
    for block_start in range(0, size, block_size):
        block = slice(block_start, min(block_start + block_size, size))
        count = round(to_prune * block.stop / size) - round(to_prune * block.start / size)
        scores = weights[block] ** 2 / np.diag(upper)[block] ** 2
        mask[block] = ~top_k_mask(-scores, count) if count else True
        for j in range(block.start, block.stop):
            if not mask[j]:
                weights[j:] -= weights[j] / upper[j, j] * upper[j, j:]
    return mask, np.where(mask, weights, 0.0)


def _unchanged_weights(mask_method: Callable[[ChunkProblem, int], np.ndarray]) -> Pruner:
    """A pruner that zeroes the weights outside ``mask_method``'s mask and leaves the rest unchanged."""

    def prune(problem: ChunkProblem, kept: int) -> tuple[np.ndarray, np.ndarray]:
        check_kept(problem.size, kept)
        mask = mask_method(problem, kept)
        return mask, np.where(mask, problem.weights, 0.0)

    prune.__doc__ = f"{mask_method.__name__} mask, kept weights unchanged."
    return prune


def obs_swap_prune(problem: ChunkProblem, kept: int) -> tuple[np.ndarray, np.ndarray]:
    """Backward OBS elimination improved by 1-swaps (:func:`greedy_obs_mask`, :func:`swap_improve`), refit."""
    mask = swap_improve(problem, greedy_obs_mask(problem, kept))
    return mask, refit(problem, mask)


def heuristic_prune(
    problem: ChunkProblem, kept: int, method: str, refit_weights: bool = False, box: float | None = None
) -> SolverResult:
    """The chunk pruned by a registered heuristic (:data:`PRUNERS`), optionally with optimal refit.

    Without refit the method's own weights are kept (unchanged for magnitude and Wanda, SparseGPT's
    sequential update for SparseGPT), clipped to the box if one is given; the name gets ``+refit``
    when the kept weights are refit (:func:`refit`).
    """
    choose("pruning method", method, PRUNERS)
    check_box(box)
    start = time.perf_counter()
    mask, weights = PRUNERS[method](problem, kept)
    if refit_weights:
        weights = refit(problem, mask, box)
    elif box is not None:
        weights = np.clip(weights, -box, box)
    return pruned_result(problem, mask, weights, f"{method}+refit" if refit_weights else method, start)


def obs_zero(weights: np.ndarray, covariance: np.ndarray, position: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Zero ``weights[position]`` and refit the rest (OBS): ``(weights', covariance', added error)``.

    ``ŵ' = ŵ − ŵ_j/Σ_jj · Σ_{:,j}``, ``Σ' = Σ − Σ_{:,j}Σ_{j,:}/Σ_jj`` with row and column j removed, and the
    error grows by the saliency ``ŵ_j²/Σ_jj`` (Hassibi & Stork 1993); Σ is ``H_free⁻¹``.
    """
    column = covariance[:, position]
    pivot = column[position]
    others = np.arange(weights.shape[0]) != position
    updated = (weights - weights[position] / pivot * column)[others]
    downdated = (covariance - np.outer(column, column) / pivot)[others][:, others]
    return updated, downdated, weights[position] ** 2 / pivot


def greedy_obs_mask(problem: ChunkProblem, kept: int) -> np.ndarray:
    """Backward elimination: repeatedly zero the least-saliency weight (OBS) until k remain."""
    check_kept(problem.size, kept)
    free = list(range(problem.size))
    weights, covariance = problem.weights.copy(), np.linalg.inv(problem.gram)
    for _ in range(problem.size - kept):
        position = int(np.argmin(weights**2 / np.diag(covariance)))
        weights, covariance, _ = obs_zero(weights, covariance, position)
        free.pop(position)
    mask = np.zeros(problem.size, dtype=bool)
    mask[free] = True
    return mask


def swap_improve(problem: ChunkProblem, mask: np.ndarray) -> np.ndarray:
    """Best-improvement 1-swaps (one kept ↔ one zeroed weight) under optimal refit, until none helps.

    The refit error of a support S is ``wᵀHw − b_Sᵀ H_SS⁻¹ b_S`` with ``b = Hw``; all k·(n−k) swaps of a
    pass are solved in one batched ``numpy.linalg.solve``.
    """
    mask = np.asarray(mask, dtype=bool).copy()
    gram, explained_by = problem.gram, problem.gram @ problem.weights
    if mask.sum() in (0, problem.size):
        return mask

    def explained(supports: np.ndarray) -> np.ndarray:
        blocks = gram[supports[:, :, None], supports[:, None, :]]
        targets = explained_by[supports]
        return np.einsum("si,si->s", targets, np.linalg.solve(blocks, targets[:, :, None])[:, :, 0])

    current = explained(np.flatnonzero(mask)[None, :])[0]
    while True:
        kept, zeroed = np.flatnonzero(mask), np.flatnonzero(~mask)
        pairs = [(i, j) for i in range(kept.size) for j in zeroed]
        supports = np.repeat(kept[None, :], len(pairs), axis=0)
        for row, (i, j) in enumerate(pairs):
            supports[row, i] = j
        gains = explained(supports)
        best = int(np.argmax(gains))
        if gains[best] <= current * (1 + 1e-12):
            return mask
        i, j = pairs[best]
        mask[kept[i]], mask[j], current = False, True, gains[best]


PRUNERS: dict[str, Pruner] = {
    "magnitude": _unchanged_weights(magnitude_mask),
    "wanda": _unchanged_weights(wanda_mask),
    "sparsegpt": sparsegpt_prune,
    "obs_swap": obs_swap_prune,
}


@dataclass(order=True)
class _Node:
    """A branch-and-bound node: the free (not zeroed) indices, which of them are forced kept, the bound."""

    bound: float
    free: np.ndarray = field(compare=False)
    forced: np.ndarray = field(compare=False)


def removal_bound(weights: np.ndarray, covariance: np.ndarray, undecided: np.ndarray, count: int) -> float:
    """Lower bound on the extra error of zeroing ``count`` more of the ``undecided`` free weights.

    For a zeroed set T the extra error is ``ŵ_Tᵀ (Σ_TT)⁻¹ ŵ_T`` (Σ = ``H_free⁻¹``). It is at least every
    single saliency in T (monotonicity), hence at least the count-th smallest saliency; and with
    ``C = D^(−1/2) Σ D^(−1/2)`` (D = diag Σ) it is at least ``Σ_{j∈T} saliency_j / λ_max(C_TT)``, with
    ``λ_max(C_TT) <= 1 + max_i (sum of the count−1 largest |C_ij|, j undecided)`` (Gershgorin on any
    count-subset). Both minimized over T give the bound.
    """
    if count <= 0:
        return 0.0
    variances = np.diag(covariance)[undecided]
    saliencies = np.sort(weights[undecided] ** 2 / variances)
    scale = 1.0 / np.sqrt(variances)
    correlation = np.abs(covariance[undecided][:, undecided]) * scale[:, None] * scale[None, :]
    # |C_ij| <= 1 = C_ii, so the count largest entries of row i are C_ii and the count − 1 largest others.
    spread = float(-np.partition(-correlation, count - 1, axis=1)[:, :count].sum(axis=1).max())
    return max(float(saliencies[count - 1]), float(saliencies[:count].sum()) / spread)


def exact_prune(
    problem: ChunkProblem, kept: int, box: float | None = None, time_limit: float | None = None
) -> SolverResult:
    """The exact optimum of the k-sparse refit problem, with a certificate (best-first branch-and-bound).

    A node fixes some weights to zero (the rest "free", some of them forced kept). Its bound is the
    error of zeroing exactly its zeros with every free weight refit, plus :func:`removal_bound` for the
    ``|free| − k`` weights still to be zeroed among the undecided ones; both are valid by monotonicity
    (module docstring). Branching on the undecided weight of largest saliency gives a "zero it" child
    (OBS downdate) and a "keep it" child; a node with k forced-kept weights or exactly k free ones is a
    leaf. The incumbent starts from backward OBS elimination improved by swaps. Nodes are taken
    best-bound first, so the global lower bound is the least open bound.

    With a box ``|ŵ| <= C`` the bounds are those of the unboxed problem (a relaxation), leaves are refit
    with the box, and a node whose unboxed refit leaves the box also gets the boxed refit error of its
    free set as a bound.

    Status ``"optimal"``: no open node has a bound below the incumbent. ``"time_limit"``: the lower bound
    is the least open bound.
    """
    check_kept(problem.size, kept)
    check_box(box)
    if time_limit is not None and not time_limit > 0:
        raise PvqError(f"time limit must be > 0 seconds, got {time_limit!r}")
    start = time.perf_counter()
    deadline = None if time_limit is None else start + time_limit
    mask = swap_improve(problem, greedy_obs_mask(problem, kept))
    best_mask, best = mask, problem.error(refit(problem, mask, box))
    tolerance = 1e-12 * problem.signal
    heap = [_Node(0.0, np.arange(problem.size), np.zeros(problem.size, dtype=bool))] if kept else []
    nodes = 0
    while heap and heap[0].bound < best - tolerance:
        if deadline is not None and nodes % TIME_CHECK_INTERVAL == 0 and time.perf_counter() > deadline:
            break
        node = heapq.heappop(heap)
        nodes += 1
        for child, weights, covariance, error in _children(problem, node, kept, box):
            if child.free.size == kept or child.forced.sum() == kept:
                value, leaf_mask = _leaf(problem, child, weights, covariance, error, kept, box)
                if value < best:
                    best, best_mask = value, leaf_mask
            elif child.bound < best - tolerance:
                heapq.heappush(heap, child)
    finished = not heap or heap[0].bound >= best - tolerance
    lower = best if finished else heap[0].bound
    return pruned_result(problem, best_mask, refit(problem, best_mask, box), "exact", start,
                         status="optimal" if finished else "time_limit", lower_bound=lower, nodes=nodes)


def _free_state(problem: ChunkProblem, free: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """``(ŵ_free, H_free⁻¹, error)`` of zeroing every index outside ``free`` and refitting the rest."""
    zeroed = np.ones(problem.size, dtype=bool)
    zeroed[free] = False
    rows = problem.gram[free]
    covariance = np.linalg.inv(rows[:, free])
    refitted = np.zeros(problem.size)
    refitted[free] = problem.weights[free] + covariance @ (rows[:, zeroed] @ problem.weights[zeroed])
    return refitted[free], covariance, problem.error(refitted)


def _children(
    problem: ChunkProblem, node: _Node, kept: int, box: float | None
) -> list[tuple[_Node, np.ndarray, np.ndarray, float]]:
    """The "zero j" and "keep j" children of a node (j the undecided weight of largest saliency),
    each with its free weights, covariance ``H_free⁻¹`` and error."""
    weights, covariance, error = _free_state(problem, node.free)
    undecided = np.flatnonzero(~node.forced)
    saliencies = weights[undecided] ** 2 / np.diag(covariance)[undecided]
    position = int(undecided[int(np.argmax(saliencies))])
    zero_weights, zero_covariance, added = obs_zero(weights, covariance, position)
    keep_forced = node.forced.copy()
    keep_forced[position] = True
    children = [
        (_Node(0.0, np.delete(node.free, position), np.delete(node.forced, position)), zero_weights,
         zero_covariance, error + added),
        (_Node(0.0, node.free, keep_forced), weights, covariance, error),
    ]
    for child, child_weights, child_covariance, child_error in children:
        undecided = np.flatnonzero(~child.forced)
        removal = removal_bound(child_weights, child_covariance, undecided, child.free.size - kept)
        child.bound = child_error + removal
        if box is not None and np.abs(child_weights).max() > box:
            child.bound = max(child.bound, _boxed_error(problem, child.free, box))
    return children


def _boxed_error(problem: ChunkProblem, free: np.ndarray, box: float) -> float:
    """Error of the boxed refit when every weight outside ``free`` is zero."""
    mask = np.zeros(problem.size, dtype=bool)
    mask[free] = True
    return problem.error(refit(problem, mask, box))


def _leaf(
    problem: ChunkProblem, node: _Node, weights: np.ndarray, covariance: np.ndarray, error: float, kept: int,
    box: float | None,
) -> tuple[float, np.ndarray]:
    """Value and mask of a leaf: keep every free weight, or (k forced) zero every undecided one."""
    mask = np.zeros(problem.size, dtype=bool)
    if node.free.size == kept:
        mask[node.free] = True
        value = error
    else:
        undecided = np.flatnonzero(~node.forced)
        mask[node.free[node.forced]] = True
        extra = weights[undecided]
        value = error + float(extra @ np.linalg.solve(covariance[np.ix_(undecided, undecided)], extra))
    if box is not None:
        value = problem.error(refit(problem, mask, box))
    return value, mask
