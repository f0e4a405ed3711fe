"""Time the kurtosis × bits grid of `theory.study` (both methods) against its 30 s budget.

Usage: ``python benchmarks/bench_theory_grid.py`` — prints the wall time of the 20 × 7 grid (INT-b with
MSE-optimal clipping and magnitude pruning at equal compression, untruncated and truncated Student-t),
and of the same comparison on one 1536 × 576 empirical tensor, each as a ratio to its budget.
"""

from __future__ import annotations

import time

import numpy as np

from theory.study import DEFAULT_BITS, DEFAULT_KURTOSES, kurtosis_bits_table, tensor_sqnr_table

GRID_BUDGET_S = 30.0


def timed(label: str, budget_s: float, run) -> None:
    start = time.perf_counter()
    table = run()
    elapsed = time.perf_counter() - start
    print(f"{label}: {len(table)} points in {elapsed:.2f} s; budget {budget_s:.0f} s; "
          f"ratio {elapsed / budget_s:.3f}")


def main() -> None:
    kurtoses, bits = DEFAULT_KURTOSES, DEFAULT_BITS
    print(f"grid: {len(kurtoses)} kurtoses × {len(bits)} bit-widths")
    timed("student-t grid", GRID_BUDGET_S, lambda: kurtosis_bits_table(kurtoses, bits))
    timed("truncated student-t grid (T = 10σ)", GRID_BUDGET_S,
          lambda: kurtosis_bits_table(kurtoses, bits, truncate=10.0))
    weights = np.random.default_rng(0).standard_t(5, size=(1536, 576)).astype(np.float32)
    timed("1536×576 tensor, INT2..8 vs pruning", GRID_BUDGET_S, lambda: tensor_sqnr_table(weights, bits))


if __name__ == "__main__":
    main()
