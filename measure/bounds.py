"""Exact optima and certified bounds of the per-layer compression problems on real model layers.

For a linear layer with weight W (out × in) and calibration Gram H = XᵀX (Kuzmin et al., NeurIPS 2023,
Sec. 4) this solves, on a seeded random subset of ``rows`` output rows and the first ``max_chunks``
chunks of ``opt_dim`` input channels of each (all chunks when ``max_chunks`` is None):

* quantization to a signed b-bit grid with a per-chunk MSE-clipped scale (:func:`theory.integer_least_squares.
  mse_scale`): the exact optimum (sphere decoding), the Park–Boyd SDP lower bound with its randomized-rounding
  upper bound, RTN and GPTQ;
* pruning to the equal-size number of kept weights k (:func:`theory.chunk_problem.equal_compression_kept`,
  paper convention p = 1 − b/16) with refit box C = 2·max|w_C| (Kuzmin et al., Sec. 4): the exact optimum
  (branch-and-bound), the perspective SDP lower bound with its top-k rounding, and magnitude, Wanda and
  SparseGPT with and without optimal refit (kept weights clipped to the box when not refit).

What the numbers mean. Each chunk is the exact sub-problem "compress only chunk C of this row, the rest of
the row held at its original values" (:mod:`theory.chunk_problem`), with the damped Gram ``H + δI``
(δ = 1% of mean diag H). A method's layer number aggregates the chunks measured:
``SQNR = 10·log10(Σ_chunks w_Cᵀ H_CC w_C / Σ_chunks error)`` (:func:`theory.chunk_problem.aggregate_sqnr`);
``sqnr_db`` uses the method's achieved errors, ``sqnr_upper_db`` the certified lower error bounds (an upper
bound of the optimal SQNR; only for exact solvers and SDP bounds). With every chunk of every row measured
this is the paper's block-diagonal surrogate of the layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from theory.accounting import PAPER_CONVENTION, Convention, check_bits
from theory.chunk_problem import (
    DEFAULT_RELATIVE_DAMPING,
    ChunkProblem,
    SolverResult,
    aggregate_sqnr,
    chunk_problems,
    chunk_slices,
    equal_compression_kept,
)
from theory.errors import PvqError
from theory.integer_least_squares import QUANTIZERS, QuantGrid, exact_quantize, heuristic_quantize, mse_scale
from theory.sdp_bound import park_boyd_bound, perspective_bound
from theory.sparse_least_squares import exact_prune, heuristic_prune, paper_box

if TYPE_CHECKING:
    from measure.capture import BlockHooks

QUANT_BOUND = "park_boyd"
PRUNE_BOUND = "perspective"
PRUNE_HEURISTICS = ("magnitude", "wanda", "sparsegpt")
FAMILIES = ("quantization", "pruning")
DEFAULT_TIME_LIMIT = 10.0
KINDS = {"exact": "exact", QUANT_BOUND: "bound", PRUNE_BOUND: "bound"}
"""Method -> kind (exact / bound); every other method is a heuristic."""


@dataclass(frozen=True)
class ChunkRecord:
    """One method's result on one chunk of one row: ``result.value`` is its error, ``result.lower_bound``
    a certified lower bound of the chunk optimum (0 for heuristics)."""

    row: int
    chunk: slice
    family: str
    signal: float
    result: SolverResult


def select_rows(out_features: int, rows: int, seed: int = 0) -> list[int]:
    """A seeded random subset of ``rows`` distinct output rows (sorted): ``Generator(seed).choice``."""
    if not (isinstance(rows, int) and 1 <= rows <= out_features):
        raise PvqError(f"rows must be an integer in 1..{out_features} (the layer's output channels), got {rows!r}")
    return sorted(int(row) for row in np.random.default_rng(seed).choice(out_features, rows, replace=False))


def quantization_results(problem: ChunkProblem, bits: int, time_limit: float, sdp: bool, seed: int
                         ) -> list[SolverResult]:
    """Exact, Park–Boyd (if ``sdp``), RTN and GPTQ on one chunk, on the grid ``mse_scale(w_C, b)·{−2^(b−1)…}``."""
    grid = QuantGrid.symmetric(bits, mse_scale(problem.weights, bits))
    results = [exact_quantize(problem, grid, time_limit=time_limit)]
    if sdp:
        bound = park_boyd_bound(problem, grid, seed=seed)
        results.append(replace(bound, method=QUANT_BOUND))
    return results + [heuristic_quantize(problem, grid, method) for method in QUANTIZERS]


def pruning_results(problem: ChunkProblem, kept: int, time_limit: float, sdp: bool) -> list[SolverResult]:
    """Exact, perspective (if ``sdp``), and each heuristic with and without refit, all with box 2·max|w_C|."""
    box = paper_box(problem.weights)
    results = [exact_prune(problem, kept, box=box, time_limit=time_limit)]
    if sdp:
        bound = perspective_bound(problem, kept, box=box)
        results.append(replace(bound, method=PRUNE_BOUND))
    return results + [heuristic_prune(problem, kept, method, refit_weights=refit, box=box)
                      for method in PRUNE_HEURISTICS for refit in (False, True)]


def solve_chunks(
    weight: np.ndarray, gram: np.ndarray, bits: int, opt_dim: int = 32, rows: int = 16,
    max_chunks: int | None = None, convention: Convention = PAPER_CONVENTION,
    time_limit: float = DEFAULT_TIME_LIMIT, sdp: bool = True, seed: int = 0,
    relative_damping: float = DEFAULT_RELATIVE_DAMPING,
) -> list[ChunkRecord]:
    """Every method on every selected chunk (module docstring): rows by :func:`select_rows`, chunks the first
    ``max_chunks`` of :func:`theory.chunk_problem.chunk_slices` (all when None)."""
    check_bits(bits)
    if not (isinstance(time_limit, int | float) and math.isfinite(time_limit) and time_limit > 0):
        raise PvqError(f"the time limit must be a finite number of seconds > 0, got {time_limit!r}")
    if max_chunks is not None and not (isinstance(max_chunks, int) and max_chunks >= 1):
        raise PvqError(f"max_chunks must be None (all chunks) or an integer >= 1, got {max_chunks!r}")
    matrix = np.asarray(weight, dtype=np.float64)
    if matrix.ndim != 2:
        raise PvqError(f"the layer weight must be a matrix (out, in), got shape {matrix.shape}")
    chunks = chunk_slices(matrix.shape[1], opt_dim)[:max_chunks]
    selected = select_rows(matrix.shape[0], rows, seed)
    records = []
    for row, chunk, problem in chunk_problems(matrix, gram, opt_dim, selected, relative_damping):
        if chunk.start >= chunks[-1].stop:
            continue
        kept = equal_compression_kept(problem.size, bits, convention)
        families = {"quantization": quantization_results(problem, bits, time_limit, sdp, seed),
                    "pruning": pruning_results(problem, kept, time_limit, sdp)}
        records += [ChunkRecord(row, chunk, family, problem.signal, result)
                    for family, results in families.items() for result in results]
    return records


def aggregate_records(records: Sequence[ChunkRecord]) -> pd.DataFrame:
    """Per (family, method): layer output SQNR over the chunks measured (:func:`aggregate_sqnr`), status, gap.

    ``sqnr_db = 10·log10(Σ signal / Σ error)``; ``sqnr_upper_db`` from Σ certified lower bounds (NaN for
    heuristics); ``gap = (Σ error − Σ lower bound) / Σ error``; ``status`` "optimal" only when every chunk
    was solved to optimality, ``optimal_chunks`` counts them; ``seconds`` sums the solver times.
    """
    groups: dict[tuple[str, str], list[ChunkRecord]] = {}
    for record in records:
        groups.setdefault((record.family, record.result.method), []).append(record)
    rows = []
    for (family, method), group in groups.items():
        results = [record.result for record in group]
        interval = aggregate_sqnr(sum(record.signal for record in group), results)
        kind = KINDS.get(method, "heuristic")
        optimal = sum(result.status == "optimal" for result in results)
        status = results[0].status if kind != "exact" else "optimal" if optimal == len(results) else "time_limit"
        error = interval.error_upper
        rows.append({
            "family": family, "method": method, "kind": kind, "sqnr_db": interval.lower_db,
            "sqnr_upper_db": interval.upper_db if kind != "heuristic" else math.nan,
            "status": status, "optimal_chunks": optimal, "chunks": len(results),
            "gap": (error - interval.error_lower) / error if kind != "heuristic" and error > 0 else math.nan,
            "seconds": sum(result.seconds for result in results),
        })  # fmt: skip
    return pd.DataFrame(rows)


def layer_bounds(
    weight: np.ndarray, gram: np.ndarray, bits: int, opt_dim: int = 32, rows: int = 16,
    max_chunks: int | None = None, convention: Convention = PAPER_CONVENTION,
    time_limit: float = DEFAULT_TIME_LIMIT, sdp: bool = True, seed: int = 0,
) -> pd.DataFrame:
    """Per-method layer output SQNR (dB) with status, gap and time: aggregated :func:`solve_chunks`.

    Rows: a seeded random subset of ``rows`` output rows; chunks: the first ``max_chunks`` chunks of ``opt_dim``
    inputs of each row (all when None). Each chunk is a sub-problem with the rest of its row held at the
    original values; the aggregated SQNR is ``10·log10(Σ signal / Σ error)`` over the chunks measured
    (signal ``w_Cᵀ(H + δI)_CC w_C``), so it is a statement about those chunks, not the whole layer.
    """
    return aggregate_records(solve_chunks(weight, gram, bits, opt_dim, rows, max_chunks, convention,
                                          time_limit, sdp, seed))  # fmt: skip


def bounds_for_model(
    loaded: Any, layer_names: Sequence[str], bits_list: Sequence[int], opt_dim: int = 32, rows: int = 16,
    max_chunks: int | None = None, sdp_bits: Sequence[int] | None = None, sequences: int = 16,
    sequence_length: int = 512, batch_size: int = 4, convention: Convention = PAPER_CONVENTION,
    time_limit: float = DEFAULT_TIME_LIMIT, seed: int = 0, mode: str = "full", device: str = "cpu",
    block_hooks: BlockHooks | None = None,
) -> pd.DataFrame:
    """:func:`layer_bounds` for each named linear layer of ``loaded`` (a ``LoadedModel``) and each b.

    Grams are captured once from ``sequences × sequence_length`` calibration tokens (:mod:`measure.calibration`;
    ``mode``, ``device`` and ``block_hooks`` as in :func:`measure.capture.capture`); the SDP bounds run only at
    ``sdp_bits`` (all of ``bits_list`` when None). One row per (layer, b, method) with ``layer``, ``block``,
    ``role``, ``bits`` and the columns of :func:`aggregate_records`.
    """
    from measure.architecture import describe
    from measure.calibration import CalibrationProtocol, calibration_batches
    from measure.capture import capture
    from measure.text import calibration_text

    for bits in bits_list:
        check_bits(bits)
    arch = describe(loaded.model)
    refs = {ref.name: ref for ref in arch.linears if ref.expert_index is None}
    missing = [name for name in layer_names if name not in refs]
    if missing or not layer_names:
        raise PvqError(f"no linear layer called {', '.join(missing) or '(none given)'}; "
                       "see `pvq info MODEL --linears` for the names")  # fmt: skip
    for name in layer_names:
        chunk_slices(refs[name].in_features, opt_dim)
        select_rows(refs[name].out_features, rows)
    protocol = CalibrationProtocol(sequences, sequence_length, batch_size, bos=loaded.bos_per_window)
    batches = calibration_batches(loaded.tokenizer, calibration_text(), protocol)
    grams = capture(loaded.model, batches, mode=mode, device=device, arch=arch, block_hooks=block_hooks)
    frames = []
    for name in layer_names:
        ref = refs[name]
        weight = ref.weight().detach().double().cpu().numpy()
        gram = grams.gram_for(name).to_numpy()
        for bits in bits_list:
            sdp = sdp_bits is None or bits in sdp_bits
            frame = layer_bounds(weight, gram, bits, opt_dim, rows, max_chunks, convention, time_limit, sdp, seed)
            frames.append(frame.assign(layer=name, block=ref.block_index, role=ref.role, bits=bits))
    return pd.concat(frames, ignore_index=True)
