"""SDP bounds: certified lower bound <= exact optimum <= rounded upper bound; weak duality of the certificates."""

from __future__ import annotations

from collections.abc import Callable

import cvxpy as cp
import numpy as np
import pytest
from chunk_toys import synthetic_chunk as chunk

from theory import sdp_bound
from theory.errors import PvqError
from theory.integer_least_squares import QuantGrid, exact_quantize, mse_scale
from theory.sdp_bound import park_boyd_bound, perspective_bound
from theory.sparse_least_squares import exact_prune, paper_box


@pytest.mark.parametrize(("seed", "bits", "box_cuts"), [(0, 3, True), (1, 2, True), (2, 3, False), (3, 4, True)])
def test_park_boyd_brackets_the_exact_optimum(seed, bits, box_cuts):
    problem = chunk(seed, 10)
    grid = QuantGrid.signed(bits, mse_scale(problem.weights, bits))
    bound, exact = park_boyd_bound(problem, grid, box_cuts=box_cuts), exact_quantize(problem, grid)
    assert bound.lower_bound <= exact.value <= bound.value * (1 + 1e-12)
    assert bound.lower_bound > 0.5 * exact.value
    assert bound.status == "bound"


def test_box_cuts_tighten_the_quantization_bound():
    problem = chunk(4, 10, noise=0.05)
    grid = QuantGrid.signed(2, mse_scale(problem.weights, 2))
    with_cuts, without = park_boyd_bound(problem, grid), park_boyd_bound(problem, grid, box_cuts=False)
    assert with_cuts.lower_bound >= without.lower_bound * (1 - 1e-6)


@pytest.mark.parametrize(("seed", "kept", "box_factor"), [(5, 3, None), (6, 5, None), (7, 3, 0.6)])
def test_perspective_brackets_the_exact_optimum(seed, kept, box_factor):
    problem = chunk(seed, 10, noise=0.1)
    box = None if box_factor is None else paper_box(problem.weights, box_factor)
    bound, exact = perspective_bound(problem, kept, box=box), exact_prune(problem, kept, box=box)
    assert bound.lower_bound <= exact.value <= bound.value * (1 + 1e-12)
    assert bound.lower_bound > 0.5 * exact.value


def test_a_loose_solver_still_gives_a_valid_bound():
    problem = chunk(8, 10)
    grid = QuantGrid.signed(3, mse_scale(problem.weights, 3))
    assert park_boyd_bound(problem, grid, solver="SCS").lower_bound <= exact_quantize(problem, grid).value
    assert perspective_bound(problem, 3, solver="SCS").lower_bound <= exact_prune(problem, 3).value


def test_certified_value_is_close_to_the_solver_value():
    problem = chunk(9, 10)
    grid = QuantGrid.signed(3, mse_scale(problem.weights, 3))
    values = []
    solve = cp.Problem.solve

    def recording_solve(self, *args, **kwargs):
        values.append(solve(self, *args, **kwargs))
        return values[-1]

    cp.Problem.solve = recording_solve
    try:
        bound = park_boyd_bound(problem, grid)
    finally:
        cp.Problem.solve = solve
    solver_value = values[0] * np.mean(np.diag(problem.gram)) * grid.scale**2
    assert bound.lower_bound == pytest.approx(solver_value, rel=1e-5)


def recorded_arguments(monkeypatch, name: str) -> tuple[list[tuple], Callable]:
    """Record the arguments of ``theory.sdp_bound.<name>`` (a certified dual evaluation); return the
    list of calls and the original function."""
    calls, original = [], getattr(sdp_bound, name)

    def recording(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(sdp_bound, name, recording)
    return calls, original


@pytest.mark.parametrize("seed", range(3))
def test_perturbed_quantization_multipliers_still_bound(monkeypatch, seed):
    problem = chunk(seed, 8)
    grid = QuantGrid.signed(2, mse_scale(problem.weights, 2))
    calls, dual_value = recorded_arguments(monkeypatch, "_quantization_dual_value")
    bound, exact = park_boyd_bound(problem, grid), exact_quantize(problem, grid).value
    unit = np.mean(np.diag(problem.gram)) * grid.scale**2
    hessian, linear, constant, floor, _, integrality, box = calls[0]
    generator = np.random.default_rng(seed)
    for _ in range(20):
        value = unit * dual_value(
            hessian, linear, constant, floor, grid, integrality * generator.uniform(0.5, 1.5, problem.size),
            box * generator.uniform(0.5, 1.5, problem.size),
        )
        assert value <= exact * (1 + 1e-12)
    assert bound.lower_bound > 0.5 * exact


@pytest.mark.parametrize("seed", range(2))
def test_perturbed_pruning_multipliers_still_bound(monkeypatch, seed):
    problem = chunk(seed, 8)
    calls, dual_value = recorded_arguments(monkeypatch, "_pruning_dual_value")
    bound, exact = perspective_bound(problem, 3), exact_prune(problem, 3).value
    unit = np.mean(np.diag(problem.gram)) * np.abs(problem.weights).max() ** 2
    gram, linear, constant, kept, multipliers, cardinality, ceiling, box, bound_squared = calls[0]
    generator = np.random.default_rng(seed)
    for _ in range(20):
        perturbed = multipliers * generator.uniform(0.95, 1.05, (problem.size, 1, 1))
        value = unit * dual_value(gram, linear, constant, kept, perturbed,
                                  cardinality * generator.uniform(0.95, 1.05), ceiling, box, bound_squared)
        assert value <= exact * (1 + 1e-12)
    assert bound.lower_bound > 0.5 * exact


def test_unknown_solver_raises():
    problem = chunk(0, 4)
    with pytest.raises(PvqError, match="SDP solver"):
        park_boyd_bound(problem, QuantGrid.signed(2, 0.01), solver="MOSEK")
    with pytest.raises(PvqError, match="kept weights"):
        perspective_bound(problem, 4)
