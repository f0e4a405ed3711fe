"""Semidefinite lower bounds of the chunk problems, certified through their Lagrangian duals.

Quantization — Park & Boyd ("A semidefinite programming method for integer convex quadratic minimization",
Optim. Lett. 2018), the bound Kuzmin et al. (2023, Sec. 4) report. In integer units the objective is
``f(x) = xᵀPx + 2qᵀx + r`` with ``P = s²H``, ``q = −s²Hz``, ``r = s²zᵀHz``, ``z = w/s``. Every integer x
satisfies ``(x_i − f_i)(x_i − f_i − 1) >= 0`` for any integer f_i (here ``floor(z_i)`` clipped to
``[q_min, q_max − 1]``, Park & Boyd's shift), and every box point ``(x_i − q_min)(q_max − x_i) >= 0``.
Lifting ``X = xxᵀ`` to ``X ⪰ xxᵀ`` gives the SDP

    min tr(PX) + 2qᵀx + r   s.t.  [[X, x], [xᵀ, 1]] ⪰ 0,  X_ii >= (2f_i+1)x_i − f_i(f_i+1),
                                  X_ii <= (q_min+q_max)x_i − q_min·q_max  (box cuts, optional).

Its value can be trusted only to the solver's tolerance, so the reported bound is recomputed from the
multipliers μ, ν >= 0 of the two cut families. For integer box points
``f(x) >= f(x) − Σμ_i(x_i − f_i)(x_i − f_i − 1) − Σν_i(x_i − q_min)(q_max − x_i)``, a quadratic with Hessian
``P − diag μ + diag ν``; when that is positive definite its unconstrained minimum (closed form) is a lower
bound of the integer optimum whatever μ, ν >= 0 are (weak duality). μ is scaled by the best θ ∈ [0, 1]
that keeps the Hessian positive definite, and a 1e-12 relative guard covers the rounding of the closed
form. Without the box cuts (ν = 0) this is the relaxation of Kuzmin et al.'s code. Upper bound: randomized
rounding of ``N(x*, X* − x*x*ᵀ)`` samples followed by 1-opt, 3n samples as in the paper's code.

Pruning — the Shor relaxation with perspective constraints (Zheng, Sun & Li, "Improving the performance of
MIQP solvers for quadratic programs with cardinality and minimum threshold constraints: a semidefinite
program approach", INFORMS J. Comput. 2014). With ``b = Hw`` and ``c = wᵀHw``:

    min ⟨H, U⟩ − 2bᵀu + c   s.t.  [[U, u], [uᵀ, 1]] ⪰ 0,  [[U_jj, u_j], [u_j, z_j]] ⪰ 0,
                                  Σz <= k,  z <= 1,  U_jj <= C² z_j  (box |ŵ| <= C, optional).

Validity: a pruned chunk (mask m, weights ŵ zero off m) gives the feasible point ``z = m, u = ŵ,
U = ŵŵᵀ`` (``u_j² = U_jj z_j`` for z_j ∈ {0,1} because ``ŵ_j = 0`` when ``m_j = 0``) with the same
objective, so the SDP value is at most the optimum. Certified value: take multipliers
``[[α_j, −γ_j], [−γ_j, β_j]] ⪰ 0`` of the 2×2 constraints, τ of ``Σz <= k``, ε_j of ``z_j <= 1`` and σ_j
of the box; stationarity in the free z forces ``β_j = τ + ε_j − σ_j C²``. For any such multipliers with
``γ_j² <= α_j β_j`` and ``G = H − diag(α − σ) ≻ 0``, the dual value ``c − (b − γ)ᵀG⁻¹(b − γ) − τk − Σε_j``
is a lower bound. The solver's multipliers are repaired (α scaled by the best θ ∈ [0, 1] keeping G
positive definite, ε_j raised where needed to restore ``γ_j² <= α_j β_j``) and the value is evaluated in
closed form, less the same rounding guard. Upper bound: keep the k largest ``z_j`` and refit.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import cvxpy as cp
import numpy as np

from theory.chunk_problem import ChunkProblem, SolverResult, check_kept
from theory.errors import PvqError, choose
from theory.integer_least_squares import QuantGrid, one_opt, quantized_result
from theory.sparse_least_squares import check_box, pruned_result, refit, top_k_mask

SDP_SOLVERS = ("CLARABEL", "SCS")
# Relative guard against rounding in the closed-form dual value (cancellation of O(signal) terms).
ROUNDING_GUARD = 1e-12
GOLDEN_SECTION_STEPS = 60


def _solve(problem: cp.Problem, solver: str) -> None:
    """Solve without cvxpy's "Solution may be inaccurate" warning: an inaccurate dual only loosens the bound,
    never invalidates it, because every bound is recomputed from the repaired multipliers."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Solution may be inaccurate")
        problem.solve(solver=solver)


def park_boyd_bound(
    problem: ChunkProblem, grid: QuantGrid, box_cuts: bool = True, samples: int | None = None, seed: int = 0,
    solver: str = "CLARABEL",
) -> SolverResult:
    """Park–Boyd SDP lower bound and randomized-rounding + 1-opt upper bound (module docstring).

    ``box_cuts=False`` drops the box cuts, reproducing the relaxation of Kuzmin et al.'s code (weaker).
    ``samples`` defaults to 3n.
    """
    _check_solver(solver)
    start = time.perf_counter()
    unit = float(np.mean(np.diag(problem.gram))) * grid.scale**2
    hessian = problem.gram * grid.scale**2 / unit
    target = problem.weights / grid.scale
    linear, constant = -hessian @ target, float(target @ hessian @ target)
    floor = np.clip(np.floor(target), grid.q_min, grid.q_max - 1)
    lifted = cp.Variable((problem.size + 1, problem.size + 1), PSD=True)
    matrix, vector = lifted[: problem.size, : problem.size], lifted[: problem.size, problem.size]
    diagonal = cp.diag(matrix)
    integrality = diagonal >= cp.multiply(2 * floor + 1, vector) - floor * (floor + 1)
    box = diagonal <= (grid.q_min + grid.q_max) * vector - grid.q_min * grid.q_max
    constraints = [lifted[problem.size, problem.size] == 1, integrality] + ([box] if box_cuts else [])
    objective = cp.trace(hessian @ matrix) + 2 * linear @ vector + constant
    _solve(cp.Problem(cp.Minimize(objective), constraints), solver)
    if lifted.value is None:
        raise PvqError(f"the SDP solver {solver} returned no solution; try the other solver")
    integrality_multiplier = np.maximum(np.asarray(integrality.dual_value, dtype=np.float64), 0.0)
    box_multiplier = np.zeros_like(floor)
    if box_cuts:
        box_multiplier = np.maximum(np.asarray(box.dual_value, dtype=np.float64), 0.0)
    lower = unit * _quantization_dual_value(
        hessian, linear, constant, floor, grid, integrality_multiplier, box_multiplier
    )
    count = 3 * problem.size if samples is None else samples
    codes = _randomized_rounding(problem, grid, lifted.value, count, seed)
    return quantized_result(problem, grid, codes, "sdp", start, status="bound", lower_bound=max(lower, 0.0))


def _quantization_dual_value(
    hessian: np.ndarray, linear: np.ndarray, constant: float, floor: np.ndarray, grid: QuantGrid,
    integrality: np.ndarray, box: np.ndarray,
) -> float:
    """Best certified ``min_x f(x) − Σθμ_i(x_i − f_i)(x_i − f_i − 1) − Σν_i(x_i − q_min)(q_max − x_i)`` over θ.

    The solver's μ leaves the Hessian ``P − diag μ + diag ν`` singular up to rounding, so μ is scaled by
    the θ ∈ [0, θ_max) maximizing the (concave) closed-form value, θ_max being where it stops being
    positive definite.
    """
    low, high = grid.q_min, grid.q_max
    base = hessian + np.diag(box)
    slope = linear - box * (low + high) / 2
    offset = constant + float(box.sum()) * low * high

    def value(theta: float) -> float:
        scaled = theta * integrality
        return _closed_form_minimum(base - np.diag(scaled), slope + scaled * (2 * floor + 1) / 2,
                                    offset - float(scaled @ (floor * (floor + 1))), 0.0)

    return _maximize_scaling(value, base, integrality)


def _closed_form_minimum(curvature: np.ndarray, slope: np.ndarray, offset: float, penalty: float) -> float:
    """``min_x xᵀAx + 2bᵀx + c − penalty = c − bᵀA⁻¹b − penalty`` less a rounding guard; −inf unless A ≻ 0."""
    try:
        factor = np.linalg.cholesky(curvature)
    except np.linalg.LinAlgError:
        return -np.inf
    solved = np.linalg.solve(factor, slope)
    reduction = float(solved @ solved)
    return offset - reduction - penalty - ROUNDING_GUARD * (abs(offset) + reduction + abs(penalty))


def _maximize_scaling(value: Callable[[float], float], base: np.ndarray, multiplier: np.ndarray) -> float:
    """Golden-section maximum of a concave ``value(θ)`` over ``θ ∈ [0, min(1, θ_max)]``.

    ``θ_max`` is the largest θ keeping ``base − θ·diag(multiplier)`` positive definite:
    ``1/λ_max(L⁻¹ diag(multiplier) L⁻ᵀ)`` with ``base = LLᵀ``. Returns the best value seen (each is a
    valid bound).
    """
    weights = np.sqrt(np.maximum(multiplier, 0.0))
    factor = np.linalg.cholesky(base)
    whitened = np.linalg.solve(factor, np.diag(weights))
    largest = float(np.linalg.eigvalsh(whitened.T @ whitened)[-1])
    low, high = 0.0, 1.0 if largest <= 0 else min(1.0, 1.0 / largest)
    best = max(value(0.0), value(high))
    ratio = (np.sqrt(5.0) - 1) / 2
    for _ in range(GOLDEN_SECTION_STEPS):
        left, right = high - ratio * (high - low), low + ratio * (high - low)
        left_value, right_value = value(left), value(right)
        best = max(best, left_value, right_value)
        if left_value < right_value:
            low = left
        else:
            high = right
    return best


def _randomized_rounding(
    problem: ChunkProblem, grid: QuantGrid, lifted: np.ndarray, samples: int, seed: int
) -> np.ndarray:
    """Best 1-opt point over rounded samples of ``N(x*, X* − x*x*ᵀ)`` (Park & Boyd 2018), and of round(x*)."""
    size = problem.size
    mean = lifted[:size, size]
    covariance = lifted[:size, :size] - np.outer(mean, mean)
    eigenvalues, eigenvectors = np.linalg.eigh((covariance + covariance.T) / 2)
    root = eigenvectors * np.sqrt(np.maximum(eigenvalues, 0.0))
    generator = np.random.default_rng(seed)
    candidates = [np.clip(np.rint(mean), grid.q_min, grid.q_max)]
    candidates += [mean + root @ generator.standard_normal(size) for _ in range(samples)]
    improved = [one_opt(problem, grid, candidate) for candidate in candidates]
    return min(improved, key=lambda codes: problem.error(grid.scale * codes))


def perspective_bound(
    problem: ChunkProblem, kept: int, box: float | None = None, solver: str = "CLARABEL"
) -> SolverResult:
    """Perspective (Shor) SDP lower bound of the pruning chunk problem and a rounded upper bound.

    The relaxation and its certified dual value are in the module docstring; ``box`` adds
    ``U_jj <= C² z_j``, valid because ``|ŵ_j| <= C`` and ``ŵ_j = 0`` off the mask.
    """
    check_kept(problem.size, kept)
    check_box(box)
    _check_solver(solver)
    start = time.perf_counter()
    size = problem.size
    peak = float(np.abs(problem.weights).max()) or 1.0
    unit = float(np.mean(np.diag(problem.gram))) * peak**2
    gram, weights = problem.gram * peak**2 / unit, problem.weights / peak
    linear, constant = gram @ weights, float(weights @ gram @ weights)
    lifted = cp.Variable((size + 1, size + 1), PSD=True)
    matrix, vector = lifted[:size, :size], lifted[:size, size]
    support = cp.Variable(size)
    pairs = [cp.bmat([[matrix[j, j], vector[j]], [vector[j], support[j]]]) >> 0 for j in range(size)]
    cardinality, ceiling = cp.sum(support) <= kept, support <= 1
    constraints = [lifted[size, size] == 1, cardinality, ceiling, *pairs]
    bound_squared = None if box is None else (box / peak) ** 2
    if bound_squared is not None:
        magnitude = cp.diag(matrix) <= bound_squared * support
        constraints.append(magnitude)
    objective = cp.trace(gram @ matrix) - 2 * linear @ vector + constant
    _solve(cp.Problem(cp.Minimize(objective), constraints), solver)
    if lifted.value is None:
        raise PvqError(f"the SDP solver {solver} returned no solution; try the other solver")
    multipliers = np.array([pair.dual_value for pair in pairs], dtype=np.float64)
    box_multiplier = np.zeros(size) if bound_squared is None else np.maximum(magnitude.dual_value, 0.0)
    lower = unit * _pruning_dual_value(
        gram, linear, constant, kept, multipliers, max(float(cardinality.dual_value), 0.0),
        np.maximum(np.asarray(ceiling.dual_value, dtype=np.float64), 0.0), box_multiplier,
        0.0 if bound_squared is None else bound_squared,
    )
    mask = top_k_mask(np.asarray(support.value, dtype=np.float64), kept)
    return pruned_result(problem, mask, refit(problem, mask, box), "sdp", start, status="bound",
                         lower_bound=max(lower, 0.0))


def _pruning_dual_value(
    gram: np.ndarray, linear: np.ndarray, constant: float, kept: int, multipliers: np.ndarray, cardinality: float,
    ceiling: np.ndarray, box: np.ndarray, bound_squared: float,
) -> float:
    """``c − (b − γ)ᵀ(H − diag(θα − σ))⁻¹(b − γ) − τk − Σε`` at repaired multipliers (module docstring).

    α is scaled by the best θ (:func:`_maximize_scaling`), and each ε_j raised to
    ``γ_j²/(θα_j) + σ_j M_j² − τ`` where needed so that the 2×2 multipliers stay positive semidefinite.
    """
    alpha = np.maximum(multipliers[:, 0, 0], 0.0)
    gamma = np.where(alpha > 0, -multipliers[:, 0, 1], 0.0)
    base = gram + np.diag(box)

    def value(theta: float) -> float:
        scaled = theta * alpha
        needed = np.divide(gamma**2, scaled, out=np.zeros_like(scaled), where=scaled > 0)
        needed = np.where((scaled == 0) & (gamma != 0), np.inf, needed)
        slack = np.maximum(ceiling, needed + box * bound_squared - cardinality)
        return _closed_form_minimum(base - np.diag(scaled), linear - gamma, constant,
                                    cardinality * kept + float(slack.sum()))

    return _maximize_scaling(value, base, alpha)


def _check_solver(solver: str) -> None:
    choose("SDP solver", solver, SDP_SOLVERS)
