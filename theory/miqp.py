"""Reference solves of the chunk problems as mixed-integer QPs through cvxpy + SCIP (validation only).

Quantization: ``min (s·x − w)ᵀH(s·x − w)`` over integer ``x ∈ [q_min, q_max]ⁿ``.
Pruning (big-M): ``min (u − w)ᵀH(u − w)`` over ``u ∈ ℝⁿ``, ``z ∈ {0,1}ⁿ`` with ``|u_j| <= M_j z_j`` and
``Σz <= k``. Without a box, ``M_j = |w_j| + sqrt(U/λ_min(H))`` for the error U of any feasible point
(here backward OBS elimination): an optimum u* has ``λ_min‖u* − w‖² <= (u*−w)ᵀH(u*−w) <= U``, so the
constraint removes no optimum. With a box C, ``M_j = C``.

Both are posed as ``‖R(v − v₀)‖²`` in normalized units (R the Cholesky factor of H divided by its mean
diagonal, v the codes or the weights divided by max|w|): expanding ``(s·x − w)ᵀH(s·x − w)`` instead leaves
a large constant ``wᵀHw`` that cancels against the other terms and SCIP then stops at wrong "optima".
These solves are slow (minutes at n = 32); they exist to check the dedicated solvers and to time them.
"""

from __future__ import annotations

import time
import warnings

import cvxpy as cp
import numpy as np

from theory.chunk_problem import ChunkProblem, SolverResult, check_kept
from theory.errors import PvqError
from theory.integer_least_squares import QuantGrid, quantized_result
from theory.sparse_least_squares import check_box, greedy_obs_mask, pruned_result, refit


def miqp_quantize(problem: ChunkProblem, grid: QuantGrid, time_limit: float | None = None) -> SolverResult:
    """Quantization chunk problem solved by SCIP (integer variables in the box)."""
    start = time.perf_counter()
    codes = cp.Variable(problem.size, integer=True)
    factor, unit = _normalized_factor(problem.gram * grid.scale**2)
    objective = cp.sum_squares(factor @ (codes - problem.weights / grid.scale))
    constraints = [codes >= grid.q_min, codes <= grid.q_max]
    status, lower, nodes = _solve_scip(cp.Problem(cp.Minimize(objective), constraints), time_limit)
    lower *= unit
    return quantized_result(problem, grid, np.rint(codes.value), "miqp", start, status=status,
                            lower_bound=lower, nodes=nodes)


def miqp_prune(
    problem: ChunkProblem, kept: int, box: float | None = None, time_limit: float | None = None
) -> SolverResult:
    """Pruning chunk problem solved by SCIP as a big-M MIQP (module docstring); the weights are refit
    on SCIP's support so that the reported value is exact."""
    check_kept(problem.size, kept)
    check_box(box)
    start = time.perf_counter()
    if box is None:
        incumbent = problem.error(refit(problem, greedy_obs_mask(problem, kept)))
        smallest = float(np.linalg.eigvalsh(problem.gram)[0])
        big_m = np.abs(problem.weights) + np.sqrt(incumbent / smallest)
    else:
        big_m = np.full(problem.size, box)
    peak = float(np.abs(problem.weights).max()) or 1.0
    weights = cp.Variable(problem.size)
    support = cp.Variable(problem.size, boolean=True)
    factor, unit = _normalized_factor(problem.gram * peak**2)
    objective = cp.sum_squares(factor @ (weights - problem.weights / peak))
    constraints = [cp.abs(weights) <= cp.multiply(big_m / peak, support), cp.sum(support) <= kept]
    status, lower, nodes = _solve_scip(cp.Problem(cp.Minimize(objective), constraints), time_limit)
    lower *= unit
    mask = support.value > 0.5
    return pruned_result(problem, mask, refit(problem, mask, box), "miqp", start, status=status,
                         lower_bound=lower, nodes=nodes)


def _normalized_factor(gram: np.ndarray) -> tuple[np.ndarray, float]:
    """``(R, unit)`` with ``RᵀR = gram / unit``, ``unit`` the mean diagonal of ``gram``."""
    unit = float(np.mean(np.diag(gram)))
    return np.linalg.cholesky(gram / unit).T, unit


def _solve_scip(problem: cp.Problem, time_limit: float | None) -> tuple[str, float, int]:
    """Solve with SCIP; return ``(status, lower bound, branch-and-bound nodes)``.

    The lower bound is SCIP's dual bound shifted by cvxpy's objective offset; ``"optimal"`` only when
    SCIP reports a proven optimum.
    """
    if time_limit is not None and not time_limit > 0:
        raise PvqError(f"time limit must be > 0 seconds, got {time_limit!r}")
    params = {} if time_limit is None else {"limits/time": float(time_limit)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Solution may be inaccurate")
        problem.solve(solver=cp.SCIP, scip_params=params)
    if problem.value is None or not np.isfinite(problem.value):
        raise PvqError(f"SCIP found no feasible point (status {problem.status}); raise the time limit")
    stats = problem.solver_stats.extra_stats
    model = stats["model"]
    offset = problem.value - stats["value"]
    status = "optimal" if stats["scip_status"] == "optimal" else "time_limit"
    return status, max(float(model.getDualbound()) + offset, 0.0), int(model.getNNodes())
