"""Exact chunk solvers against cvxpy + SCIP on realistic Grams (targets: quantization <= 1 s, pruning <= 10 s
median per row-chunk at opt-dim 32, each >= 10x faster than SCIP).

Usage: ``python benchmarks/bench_bounds.py [--gram FILE.npy [--weights FILE.npy]] [--opt-dim 32] [--bits 4]
[--chunks 12] [--damping 0.01] [--mask-encoding none] [--scip-chunks 2] [--scip-time-limit 120]
[--time-limit 60] [--sdp] [--noise 1.0] [--seed 0]``.

Without ``--gram`` the layer is synthetic (:mod:`theory.synthetic_layer`: correlated heavy-tailed channels
with a few outlier channels; a smaller ``--noise`` makes the channels more collinear). ``--weights``
(out, in) defaults to synthetic weights of the Gram's width. The grid step is the per-tensor MSE scale
(:func:`theory.integer_least_squares.mse_scale`); pruning keeps ``k = equal_compression_kept(opt_dim,
bits, convention)`` weights per chunk (k = 8 of 32 at 4 bits, paper convention).

For ``--chunks`` random (row, chunk) pairs it times the exact solvers, then runs the same problems
through SCIP on the first ``--scip-chunks`` pairs and prints the SCIP/exact time ratio (``>=`` when SCIP
stopped at its time limit). It also prints the block-diagonal output SQNR over the measured chunks of
every heuristic, of the exact optima and (with ``--sdp``) of the SDP lower bounds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from theory.accounting import Convention
from theory.chunk_problem import (
    ChunkProblem,
    SolverResult,
    aggregate_sqnr,
    chunk_slices,
    damped_gram,
    equal_compression_kept,
    make_chunk_problem,
)
from theory.errors import PvqError
from theory.integer_least_squares import QUANTIZERS, QuantGrid, exact_quantize, heuristic_quantize, mse_scale
from theory.miqp import miqp_prune, miqp_quantize
from theory.sdp_bound import park_boyd_bound, perspective_bound
from theory.sparse_least_squares import PRUNERS, exact_prune, heuristic_prune
from theory.synthetic_layer import synthetic_gram, synthetic_weights

SYNTHETIC_WIDTH = 256
SYNTHETIC_ROWS = 64


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gram", type=Path, help="a layer input Gram XᵀX saved with numpy.save")
    parser.add_argument("--weights", type=Path, help="the layer weight (out, in) saved with numpy.save")
    parser.add_argument("--opt-dim", type=int, default=32)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--chunks", type=int, default=12, help="random (row, chunk) pairs to solve")
    parser.add_argument("--damping", type=float, default=0.01, help="relative damping λ (δ = λ·mean diag H)")
    parser.add_argument("--mask-encoding", default="none", help="equal-compression convention for pruning")
    parser.add_argument("--scip-chunks", type=int, default=2)
    parser.add_argument("--scip-time-limit", type=float, default=120.0)
    parser.add_argument("--time-limit", type=float, default=60.0, help="per exact solve, seconds")
    parser.add_argument("--sdp", action="store_true", help="also time the SDP bounds")
    parser.add_argument("--noise", type=float, default=1.0, help="synthetic layer: independent channel noise")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def load_layer(arguments: argparse.Namespace, generator: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(damped Gram, weight)`` from the files given, or a synthetic layer."""
    if arguments.gram is None:
        gram = synthetic_gram(generator, SYNTHETIC_WIDTH, noise=arguments.noise)
    else:
        gram = np.load(arguments.gram)
    if arguments.weights is None:
        weight = synthetic_weights(generator, SYNTHETIC_ROWS, gram.shape[0])
    else:
        weight = np.load(arguments.weights)
    if weight.ndim != 2 or weight.shape[1] != gram.shape[0]:
        raise PvqError(f"weight shape {weight.shape} does not match the {gram.shape[0]}-wide Gram; pass (out, in)")
    damped, _ = damped_gram(gram, arguments.damping)
    return damped, weight


def sample_chunks(
    weight: np.ndarray, gram: np.ndarray, opt_dim: int, count: int, generator: np.random.Generator
) -> list[ChunkProblem]:
    """``count`` distinct random (row, chunk) pairs of full width ``opt_dim``, as chunk problems."""
    slices = [part for part in chunk_slices(weight.shape[1], opt_dim) if part.stop - part.start == opt_dim]
    pairs = [(row, part) for row in range(weight.shape[0]) for part in slices]
    chosen = generator.choice(len(pairs), size=min(count, len(pairs)), replace=False)
    return [make_chunk_problem(weight[pairs[i][0], pairs[i][1]], gram[pairs[i][1], pairs[i][1]]) for i in chosen]


def timed(solve: Callable[[], SolverResult]) -> tuple[SolverResult, float]:
    start = time.perf_counter()
    result = solve()
    return result, time.perf_counter() - start


def summarize(name: str, results: list[SolverResult]) -> None:
    seconds = [result.seconds for result in results]
    nodes = [result.nodes for result in results]
    proved = sum(result.status == "optimal" for result in results)
    print(f"{name:<22} median {statistics.median(seconds):8.3f} s   max {max(seconds):8.3f} s   "
          f"median nodes {statistics.median(nodes):>9.0f}   proved optimal {proved}/{len(results)}")


def compare_with_scip(name: str, exact: list[SolverResult], scip: list[tuple[SolverResult, float]]) -> None:
    for index, (reference, seconds) in enumerate(scip):
        bound = ">=" if reference.status != "optimal" else "  "
        agree = abs(reference.value - exact[index].value) <= 1e-6 * max(exact[index].value, 1e-300)
        print(f"{name:<22} chunk {index}: SCIP {seconds:8.2f} s ({reference.status}), exact "
              f"{exact[index].seconds:7.3f} s, ratio {bound}{seconds / exact[index].seconds:9.1f}x, "
              f"SCIP value {'equal' if agree else 'differs'} "
              f"(SCIP {reference.value:.6g}, exact {exact[index].value:.6g})")


def print_sqnr(signal: float, table: dict[str, list[SolverResult]]) -> None:
    print("\nblock-diagonal output SQNR over the measured chunks (dB): value (lower bound) .. upper bound")
    for name, results in table.items():
        interval = aggregate_sqnr(signal, results)
        upper = f"{interval.upper_db:7.2f}" if any(result.lower_bound > 0 for result in results) else "    -  "
        print(f"  {name:<22} {interval.lower_db:7.2f} .. {upper}")


def main() -> None:
    arguments = parse_arguments()
    generator = np.random.default_rng(arguments.seed)
    gram, weight = load_layer(arguments, generator)
    grid = QuantGrid.signed(arguments.bits, mse_scale(weight, arguments.bits))
    convention = Convention(mask_encoding=arguments.mask_encoding)
    kept = equal_compression_kept(arguments.opt_dim, arguments.bits, convention)
    problems = sample_chunks(weight, gram, arguments.opt_dim, arguments.chunks, generator)
    source = arguments.gram or f"synthetic {SYNTHETIC_WIDTH}-wide layer"
    print(f"layer {source}; weight {weight.shape}; opt-dim {arguments.opt_dim}; {arguments.bits}-bit grid "
          f"step {grid.scale:.4g}; pruning keeps {kept} of {arguments.opt_dim}; damping {arguments.damping}; "
          f"{len(problems)} row-chunks\n")
    table: dict[str, list[SolverResult]] = {}
    table["exact quantization"] = [exact_quantize(p, grid, time_limit=arguments.time_limit) for p in problems]
    table["exact pruning"] = [exact_prune(p, kept, time_limit=arguments.time_limit) for p in problems]
    summarize("exact quantization", table["exact quantization"])
    summarize("exact pruning", table["exact pruning"])
    for method in QUANTIZERS:
        table[method] = [heuristic_quantize(p, grid, method) for p in problems]
    for method in PRUNERS:
        for refit_weights in (False, True):
            results = [heuristic_prune(p, kept, method, refit_weights) for p in problems]
            table[results[0].method] = results
    if arguments.sdp:
        table["Park-Boyd SDP"] = [park_boyd_bound(p, grid) for p in problems]
        table["perspective SDP"] = [perspective_bound(p, kept) for p in problems]
        summarize("Park-Boyd SDP", table["Park-Boyd SDP"])
        summarize("perspective SDP", table["perspective SDP"])
    scip_problems = problems[: arguments.scip_chunks]
    print()
    limit = arguments.scip_time_limit
    compare_with_scip("quantization", table["exact quantization"],
                      [timed(lambda p=p: miqp_quantize(p, grid, limit)) for p in scip_problems])
    compare_with_scip("pruning", table["exact pruning"],
                      [timed(lambda p=p: miqp_prune(p, kept, time_limit=limit)) for p in scip_problems])
    print_sqnr(sum(p.signal for p in problems), table)


if __name__ == "__main__":
    main()
