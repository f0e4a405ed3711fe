"""Quantizing one row chunk: exact box-constrained integer least squares and the GPTQ / RTN points.

With a fixed grid ``s·{q_min, …, q_max}`` (the scale is chosen beforehand by MSE clipping, as in
Kuzmin et al. 2023, Sec. 4) the chunk problem is

    min_{x ∈ ℤⁿ, q_min ≤ x ≤ q_max}  (s·x − w)ᵀ H (s·x − w)  =  s²·‖R (x − z)‖²,   z = w/s,  H = RᵀR,

a box-constrained integer least-squares (closest lattice point) problem. :func:`exact_quantize` solves it
by Schnorr–Euchner sphere decoding with the box (Chang & Han, "Solving box-constrained integer least
squares problems", IEEE Trans. Wireless Commun. 2008): depth-first enumeration of the levels of the
triangular factor, children visited in order of increasing partial distance, pruned by the incumbent.
Because every term of the partial distance is >= 0, a finished search is a proof of optimality.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from theory.accounting import check_bits
from theory.chunk_problem import ChunkProblem, SolverResult
from theory.errors import PvqError, choose

# Residual weight ρ of :func:`search_order` per named column ordering.
ORDERINGS = {"hybrid": 0.5, "chang_han": 1.0, "vblast": 0.0}
MSE_SCALE_POINTS = 100
TIME_CHECK_INTERVAL = 2048


@dataclass(frozen=True)
class QuantGrid:
    """The integer grid ``s·{q_min, …, q_max}`` a chunk is quantized to."""

    scale: float
    q_min: int
    q_max: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise PvqError(f"the quantization scale must be a finite number > 0, got {self.scale!r}")
        if not self.q_min < self.q_max:
            raise PvqError(f"the integer grid needs q_min < q_max, got {self.q_min}..{self.q_max}")

    @classmethod
    def signed(cls, bits: int, scale: float) -> QuantGrid:
        """The signed INT-b grid of Kuzmin et al. (NeurIPS 2023, Sec. 2), ``s·{−2^(b−1), …, 2^(b−1) − 1}``.

        With the MSE step of :func:`mse_scale` (a clipped range) every code is reachable; this is the grid
        of the chunk bounds, not the GPTQ-convention grid of the measured methods
        (:mod:`measure.compress.methods.uniform`).
        """
        check_bits(bits)
        return cls(scale=float(scale), q_min=-(2 ** (bits - 1)), q_max=2 ** (bits - 1) - 1)

    def codes(self, values: np.ndarray) -> np.ndarray:
        """Round-to-nearest codes ``clip(round(v/s), q_min, q_max)``."""
        return np.clip(np.rint(np.asarray(values, dtype=np.float64) / self.scale), self.q_min, self.q_max)


def mse_scale(weights: np.ndarray, bits: int, points: int = MSE_SCALE_POINTS) -> float:
    """Grid step minimizing the weight MSE of round-to-nearest: a line search over clipping ratios.

    ``s = α·max|w| / (2^(b−1) − 1)`` for ``α ∈ {1/P, 2/P, …, 1}`` (P = ``points``), the α with the
    least ``Σ (s·clip(round(w/s)) − w)²``: MSE range setting by line search, as Kuzmin et al.'s released
    code does for its bounds (``estimate_range_line_search``).
    """
    check_bits(bits)
    values = np.asarray(weights, dtype=np.float64).ravel()
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise PvqError("mse_scale needs a non-empty array of finite weights")
    peak = float(np.abs(values).max())
    if peak == 0:
        raise PvqError("all weights are zero: no quantization scale to choose")
    q_max = 2 ** (bits - 1) - 1
    scales = np.arange(1, points + 1) / points * peak / q_max
    codes = np.clip(np.rint(values[None, :] / scales[:, None]), -q_max - 1, q_max)
    errors = ((codes * scales[:, None] - values[None, :]) ** 2).sum(axis=1)
    return float(scales[int(np.argmin(errors))])


def quantized_result(
    problem: ChunkProblem, grid: QuantGrid, codes: np.ndarray, method: str, start: float,
    status: str = "heuristic", lower_bound: float = 0.0, nodes: int = 0,
) -> SolverResult:
    """Package integer codes as a :class:`SolverResult` (value = error of ``s·codes``)."""
    codes = np.asarray(codes, dtype=np.float64)
    solution = grid.scale * codes
    value = problem.error(solution)
    return SolverResult(
        method=method, value=value, solution=solution, code=codes.astype(np.int64), status=status,
        lower_bound=min(lower_bound, value), nodes=nodes,
        seconds=time.perf_counter() - start,
    )


def rtn_codes(problem: ChunkProblem, grid: QuantGrid) -> np.ndarray:
    """Round to nearest: ``x = clip(round(w/s), q_min, q_max)``, blind to H."""
    return grid.codes(problem.weights)


def gptq_codes(problem: ChunkProblem, grid: QuantGrid, order: np.ndarray | None = None) -> np.ndarray:
    """GPTQ on one row (Frantar et al., ICLR 2023, Alg. 1): round, then feed the error back through H⁻¹.

    With ``U`` the upper Cholesky factor of ``H⁻¹`` (``H⁻¹ = UᵀU``), column j is rounded and the rest is
    updated by ``w_{j:} −= (w_j − s·x_j)/U_jj · U_{j,j:}``; this makes each rounded value the conditional
    least-squares optimum given the earlier codes, i.e. Babai's nearest-plane point.
    ``order`` permutes the columns (default: natural order).
    """
    permutation = np.arange(problem.size) if order is None else np.asarray(order)
    gram = problem.gram[np.ix_(permutation, permutation)]
    upper = np.linalg.cholesky(np.linalg.inv(gram)).T
    target = problem.weights[permutation].copy()
    codes = np.empty(problem.size)
    for j in range(problem.size):
        codes[j] = np.clip(np.rint(target[j] / grid.scale), grid.q_min, grid.q_max)
        feedback = (target[j] - grid.scale * codes[j]) / upper[j, j]
        target[j:] -= feedback * upper[j, j:]
    result = np.empty(problem.size)
    result[permutation] = codes
    return result


QUANTIZERS: dict[str, Callable[[ChunkProblem, QuantGrid], np.ndarray]] = {"rtn": rtn_codes, "gptq": gptq_codes}


def heuristic_quantize(problem: ChunkProblem, grid: QuantGrid, method: str) -> SolverResult:
    """The chunk quantized by a registered heuristic (:data:`QUANTIZERS`), lower bound 0."""
    choose("quantization method", method, QUANTIZERS)
    start = time.perf_counter()
    return quantized_result(problem, grid, QUANTIZERS[method](problem, grid), method, start)


def one_opt(problem: ChunkProblem, grid: QuantGrid, codes: np.ndarray) -> np.ndarray:
    """Greedy integer coordinate descent inside the box (the 1-opt of Park & Boyd, Optim. Lett. 2018).

    With ``g = H(s·x − w)``, moving ``x_i`` by an integer c changes the error by ``s²c²H_ii + 2scg_i``;
    the best c for coordinate i is ``clip(round(−g_i/(s·H_ii)))`` to the box. The best coordinate moves
    until no move lowers the error, so the result is 1-opt (no single-code change improves it).
    """
    codes = np.clip(np.rint(np.asarray(codes, dtype=np.float64)), grid.q_min, grid.q_max)
    scale, diagonal = grid.scale, np.diag(problem.gram)
    gradient = problem.gram @ (scale * codes - problem.weights)
    tolerance = 1e-13 * max(problem.signal, float(np.abs(gradient).max()) * scale, np.finfo(float).tiny)
    while True:
        step = np.clip(np.rint(-gradient / (scale * diagonal)), grid.q_min - codes, grid.q_max - codes)
        change = scale * scale * step * step * diagonal + 2 * scale * step * gradient
        i = int(np.argmin(change))
        if change[i] >= -tolerance:
            return codes
        codes[i] += step[i]
        gradient += scale * step[i] * problem.gram[:, i]


def search_order(gram: np.ndarray, target: np.ndarray, low: int, high: int, residual_weight: float) -> np.ndarray:
    """Column order for sphere decoding, greedy from the top level of the search tree down.

    Among the columns S not yet placed, with ``m`` the conditional mean of ``x_S`` given the placed
    columns fixed at their box-rounded values and ``Σ = (H_SS)⁻¹``, place the j with the largest
    ``((1 − ρ) + ρ·(clip(round(m_j)) − m_j)²) / Σ_jj`` (ρ = ``residual_weight``), then fix it at
    ``clip(round(m_j))`` (``m ← m + Σ_{:,j}/Σ_jj · (x_j − m_j)``, ``Σ`` downdated). ρ = 0 is V-BLAST
    ("strongest first": largest conditional precision ``R_jj²``, Foschini et al. 1999); ρ = 1 is the
    box-aware rule of Chang & Han (2008, Sec. III-B): largest Babai residual. Inside the box the squared
    residual is at most 1/4, so ρ = 1/2 ranks in-box columns mostly by precision and puts columns whose
    mean lies outside the box first (:data:`ORDERINGS`, measured in ``benchmarks/bench_bounds.py``).
    Returns ``order`` with ``order[level] = column`` (level n−1 is searched first).
    """
    size = gram.shape[0]
    order = np.empty(size, dtype=np.int64)
    remaining = list(range(size))
    covariance, mean = np.linalg.inv(gram), np.asarray(target, dtype=np.float64).copy()
    for level in range(size - 1, -1, -1):
        rounded = np.clip(np.rint(mean), low, high)
        scores = ((1 - residual_weight) + residual_weight * (rounded - mean) ** 2) / np.diag(covariance)
        position = int(np.argmax(scores))
        order[level] = remaining.pop(position)
        column = covariance[:, position] / covariance[position, position]
        mean = np.delete(mean + column * (rounded[position] - mean[position]), position)
        covariance = covariance - np.outer(column, covariance[position])
        covariance = np.delete(np.delete(covariance, position, axis=0), position, axis=1)
    return order


def exact_quantize(
    problem: ChunkProblem, grid: QuantGrid, time_limit: float | None = None, ordering: str = "hybrid"
) -> SolverResult:
    """The exact optimum of the box-constrained integer least-squares chunk problem, with a certificate.

    Schnorr–Euchner sphere decoding (module docstring) on ``H_pp = RᵀR`` for the column order p
    (:func:`search_order`, ``ordering`` one of :data:`ORDERINGS`). At level i the center is
    ``c_i = z_i − Σ_{j>i} (R_ij/R_ii)(x_j − z_j)`` and the partial distance
    ``d_i = d_{i+1} + R_ii²(x_i − c_i)²``; candidates ``x_i`` are visited outward from ``clip(round(c_i))``
    in order of increasing ``|x_i − c_i|`` within the box, so the first candidate whose ``d_i`` reaches
    the incumbent closes the level, and a candidate whose ``d_i`` plus the box bound of the levels below
    (:class:`_SphereSearch`) reaches it is skipped. The incumbent starts as the best of RTN and GPTQ,
    each improved by :func:`one_opt`.

    Status ``"optimal"``: the search finished (``lower_bound = value``). Status ``"time_limit"``: the
    lower bound is the least partial distance of the unexplored subtrees (each is the next candidate of
    a level on the current path), which lower-bounds every point not yet enumerated.
    """
    choose("column ordering", ordering, ORDERINGS)
    if time_limit is not None and not time_limit > 0:
        raise PvqError(f"time limit must be > 0 seconds, got {time_limit!r}")
    start = time.perf_counter()
    incumbent = min(
        (one_opt(problem, grid, method(problem, grid)) for method in QUANTIZERS.values()),
        key=lambda codes: problem.error(grid.scale * codes),
    )
    target = problem.weights / grid.scale
    order = search_order(problem.gram, target, grid.q_min, grid.q_max, ORDERINGS[ordering])
    factor = np.linalg.cholesky(problem.gram[np.ix_(order, order)]).T
    search = _SphereSearch(factor, target[order], grid.q_min, grid.q_max)
    finished = search.run(incumbent[order], None if time_limit is None else start + time_limit)
    codes = np.empty(problem.size)
    codes[order] = search.best_codes
    lower = search.lower_bound * grid.scale**2
    return quantized_result(
        problem, grid, codes, "exact", start, status="optimal" if finished else "time_limit",
        lower_bound=lower, nodes=search.nodes,
    )


class _SphereSearch:
    """State of one Schnorr–Euchner enumeration of ``min ‖R(x − z)‖²`` over the integer box.

    Besides the partial distance, a node at level i is pruned by a box bound on the levels below it.
    Let ``m`` be the continuous conditional mean of ``y_{<i}`` given ``x_{≥i}`` (updated as
    ``m ← m_{<i} + v_i (x_i − c_i)`` with ``v_i = −R_{<i,<i}⁻¹ R_{<i,i}``; its last entry is the next
    center), ``Σ = (H_{<i,<i})⁻¹`` and ``e = m − clip(m, q_min, q_max)`` the excess over the box. The least
    error of the lower levels is ``min (y − m)ᵀ Σ⁻¹ (y − m)`` over box points y, each of which moves every
    violated coordinate j by at least ``|e_j|`` towards the box. Relaxing to those constraints only and
    taking the Lagrange multipliers ``t·q`` (q >= 0, best t) gives ``(qᵀ|e|)² / (q∘sign e)ᵀ Σ (q∘sign e)``;
    with ``q = e_j`` alone this is ``e_j²/Σ_jj``, with ``q = |e|`` it is ``‖e‖⁴ / eᵀΣe``. Both lower-bound
    the continuous box-constrained error, hence the integer one.
    """

    def __init__(self, factor: np.ndarray, target: np.ndarray, low: int, high: int) -> None:
        size = factor.shape[0]
        self.size, self.factor, self.target = size, factor, target
        self.low, self.high = low, high
        self.precision = (np.diag(factor) ** 2).tolist()
        self.shifts = [
            -np.linalg.solve(factor[:i, :i], factor[:i, i]) if i else np.zeros(0) for i in range(size)
        ]
        inverse = np.linalg.inv(factor)
        prefix_inverse_diagonal = np.cumsum(inverse**2, axis=1)
        self.single = [1.0 / prefix_inverse_diagonal[:i, i - 1] if i else np.zeros(0) for i in range(size)]
        self.inverse_blocks = [np.ascontiguousarray(inverse[:i, :i].T) for i in range(size)]
        self.nodes = 0
        self.best_codes = np.zeros(size)
        self.lower_bound = 0.0

    def box_penalty(self, level: int, means: np.ndarray) -> float:
        """Lower bound on the error of levels ``< level`` whose conditional means are ``means``."""
        excess = means - np.minimum(np.maximum(means, self.low), self.high)
        total = float(excess @ excess)
        if total == 0.0:
            return 0.0
        spread = self.inverse_blocks[level] @ excess
        single = float((self.single[level] * excess * excess).max())
        return max(single, total * total / float(spread @ spread))

    def run(self, incumbent: np.ndarray, deadline: float | None) -> bool:
        """Enumerate from ``incumbent``; return True when finished (then the best is optimal)."""
        n, low, high, precision, shifts = self.size, self.low, self.high, self.precision, self.shifts
        residual = self.factor @ (incumbent - self.target)
        best, best_codes = float(residual @ residual), incumbent.tolist()
        means = [np.zeros(0)] * n + [self.target]
        center, above, codes, up, down = [0.0] * n, [0.0] * n, [0] * n, [0] * n, [0] * n
        level = n - 1
        center[level] = float(self.target[level])
        first = min(max(round(center[level]), low), high)
        codes[level], up[level], down[level] = first, first + 1, first - 1
        nodes = 0
        while True:
            nodes += 1
            if deadline is not None and nodes % TIME_CHECK_INTERVAL == 0 and time.perf_counter() > deadline:
                self._stop(best, best_codes, nodes, self._open_bound(level, center, above, codes, up, down))
                return False
            offset = codes[level] - center[level]
            distance = above[level] + precision[level] * offset * offset
            if distance >= best:
                level += 1
            elif level == 0:
                best, best_codes = distance, codes.copy()
                level += 1
            else:
                lower_means = means[level + 1][:level] + shifts[level] * offset
                if distance + self.box_penalty(level, lower_means) < best:
                    means[level] = lower_means
                    level -= 1
                    middle = float(lower_means[level])
                    center[level], above[level] = middle, distance
                    first = min(max(round(middle), low), high)
                    codes[level], up[level], down[level] = first, first + 1, first - 1
                    continue
            while True:
                if level == n:
                    self._stop(best, best_codes, nodes, best)
                    return True
                upper, lower = up[level], down[level]
                if upper <= high and (lower < low or upper - center[level] <= center[level] - lower):
                    codes[level], up[level] = upper, upper + 1
                    break
                if lower >= low:
                    codes[level], down[level] = lower, lower - 1
                    break
                level += 1

    def _open_bound(self, level: int, center: list, above: list, codes: list, up: list, down: list) -> float:
        """Least partial distance over the unexplored subtrees: the current candidate, then each level's next."""
        bound = above[level] + self.precision[level] * (codes[level] - center[level]) ** 2
        for upper_level in range(level + 1, self.size):
            for candidate in (up[upper_level], down[upper_level]):
                if self.low <= candidate <= self.high:
                    offset = candidate - center[upper_level]
                    bound = min(bound, above[upper_level] + self.precision[upper_level] * offset * offset)
        return bound

    def _stop(self, best: float, best_codes: list, nodes: int, bound: float) -> None:
        self.best_codes = np.asarray(best_codes, dtype=np.float64)
        self.nodes = nodes
        self.lower_bound = min(bound, best)
