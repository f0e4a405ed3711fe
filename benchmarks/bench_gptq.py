"""GPTQ per layer on SmolLM2-135M's linear shapes: the per-column reference sweep and the library's, side by side.

Usage: ``python benchmarks/bench_gptq.py [--bits 2 4 8] [--group 128] [--threads 1] [--repeats 3]``. For each
linear shape of a SmolLM2-135M decoder block (hidden 576, intermediate 1536, 9 query and 3 key/value heads of 64:
q and o 576 × 576, k and v 192 × 576, gate and up 1536 × 576, down 576 × 1536; out × in), on random float64
weights and the Gram of 4096 correlated random input rows, and for each bit width on the symmetric and asymmetric
grids, times (best over ``--repeats``, in CPU time of this process and in wall time)

* ``per_column_gptq`` of ``tests/measure/compress/test_methods_obs.py``: the blocked OBS sweep written out column
  by column on the ``out × in`` weight (a fresh tensor per update), the form the library had before its sweep went
  transposed and in place;
* :func:`measure.compress.methods.gptq.gptq_quantize`;

and prints both, their ratios, whether the two results have the same bits, and the time of the damped inverse
Gram's Cholesky factor that both include (three O(in³) LAPACK calls: a floor neither goes below). Last, one GPTQ
pass over the model's 30 blocks × 7 linears at each setting, summed from the per-shape CPU times. ``--threads 1``
is the setting of the forked single-threaded workers; ``--threads 2`` an in-process run on a 2-core machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from measure.compress.methods.gptq import gptq_quantize
from measure.compress.methods.obs import inverse_gram_factor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # method_toys (test_methods_obs imports it)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "measure" / "compress"))
from test_methods_obs import per_column_gptq

BLOCKS = 30
SHAPES = {"q, o": ((576, 576), 2), "k, v": ((192, 576), 2), "gate, up": ((1536, 576), 2), "down": ((576, 1536), 1)}
"""Linears of one SmolLM2-135M decoder block: name -> ((out, in), count per block)."""
TOKENS = 4096
PERCDAMP = 0.01


def best_seconds(run: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Minimum CPU time (of this process) and minimum wall time of ``run`` over ``repeats`` calls."""
    cpu, wall = [], []
    for _ in range(repeats):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        run()
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    return min(cpu), min(wall)


def random_layer(shape: tuple[int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 weight of ``shape`` and the Gram ``XᵀX`` of ``TOKENS`` correlated rows with 4 outlier inputs."""
    rows, columns = shape
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, columns, generator=generator, dtype=torch.float64) / columns**0.5
    mixing = torch.eye(columns, dtype=torch.float64) + torch.randn(
        columns, columns, generator=generator, dtype=torch.float64
    ) / (4 * columns**0.5)
    inputs = torch.randn(TOKENS, columns, generator=generator, dtype=torch.float64) @ mixing
    inputs[:, :4] *= 20
    return weight, inputs.T @ inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--group", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"GPTQ g{args.group}, {args.threads} thread(s), best of {args.repeats}; ms per layer, CPU (wall)")
    print(f"{'linear':9} {'out x in':>9} {'grid':>8} {'factor':>7} {'reference':>15} {'sweep':>13} "
          f"{'ratio':>13}  bits")  # fmt: skip
    passes: dict[str, list[float]] = {}
    for seed, (name, (shape, count)) in enumerate(SHAPES.items()):
        weight, gram = random_layer(shape, seed)
        factor, _ = best_seconds(lambda gram=gram: inverse_gram_factor(gram, PERCDAMP), args.repeats)
        for bits in args.bits:
            for symmetric in (True, False):
                grid = f"{bits}b {'sym' if symmetric else 'asym'}"
                params = {"bits": bits, "group": args.group, "symmetric": symmetric, "act_order": False}
                runs = (
                    partial(per_column_gptq, weight, gram, **params),
                    partial(gptq_quantize, weight, gram, clip="minmax", **params),
                )
                reference, ours = (run() for run in runs)
                same = torch.equal(reference.view(torch.int64), ours.view(torch.int64))
                (reference_cpu, reference_wall), (cpu, wall) = (best_seconds(run, args.repeats) for run in runs)
                totals = passes.setdefault(grid, [0.0, 0.0])
                totals[0] += BLOCKS * count * reference_cpu
                totals[1] += BLOCKS * count * cpu
                print(f"{name:9} {f'{shape[0]}x{shape[1]}':>9} {grid:>8} {1e3 * factor:7.1f} "
                      f"{1e3 * reference_cpu:6.1f} ({1e3 * reference_wall:6.1f}) "
                      f"{1e3 * cpu:5.1f} ({1e3 * wall:5.1f}) "
                      f"{reference_cpu / cpu:4.2f}x ({reference_wall / wall:4.2f}x)  "
                      f"{'same' if same else 'DIFFERENT'}")  # fmt: skip
    for grid, (reference, ours) in passes.items():
        print(f"one pass, {BLOCKS} blocks x 7 linears, {grid}: reference {reference:.1f} s, sweep {ours:.1f} s "
              f"(CPU), {reference / ours:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
