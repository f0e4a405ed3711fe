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

What the numbers mean. Every number uses one Gram, the damped ``H + δI`` (δ = 1% of mean diag H,
:func:`theory.chunk_problem.damped_gram`), and one signal, the row's full output energy
``s_r = w_rᵀ(H + δI)w_r`` (:func:`theory.chunk_problem.layer_signal` of the row). Each chunk C of row r is the
exact sub-problem "compress only chunk C of this row, the rest of the row original" (:mod:`theory.chunk_problem`)
with error ``e_rC``; its relative output error is ``e_rC / s_r``. Summed over the chunks measured, a row's
relative error is ``E_r / s_r`` with ``E_r = Σ_C e_rC``: with every chunk measured that is the block-diagonal
surrogate of the row (cross terms between chunks dropped) over the row's whole output energy, the same ratio the
ledger's per-layer SQNR reports for a whole layer, ``tr(ΔW H ΔWᵀ)/tr(W H Wᵀ)``.

A method's layer number is the *energy-weighted* ratio over the sampled rows (:func:`theory.chunk_problem.
aggregate_sqnr`): ``sqnr_db = 10·log10(Σ_r s_r / Σ_r E_r)`` with the achieved errors, ``sqnr_upper_db`` the same
with the certified lower error bounds (an upper bound of the optimal SQNR; only for exact solvers and SDP
bounds). With rows drawn uniformly this is the ratio estimator of the layer's ``tr(W H Wᵀ)/Σ_rows E_r``. Its 95%
interval over rows (``*_low95``, ``*_high95``) is a percentile bootstrap (:func:`row_bootstrap_db`): rows
resampled with replacement, the ratio recomputed, the same seeded resamples for every method.

Each layer also gets the Gaussian rate–distortion reference (:mod:`theory.rate_distortion`) of the whole layer
(all rows) on the same damped Gram, family ``"reference"``: a reference for Gaussian weights with the layer's
second-order statistics, not a bound on the real weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from measure.capture.placement import ON_CPU, Placement, capture_placed
from measure.data.calibration import CalibrationProtocol, calibration_batches
from measure.evaluation.protocols import for_model
from measure.models.architecture import describe
from theory.accounting import PAPER_CONVENTION, Convention, check_bits
from theory.chunk_problem import (
    DEFAULT_RELATIVE_DAMPING,
    ChunkProblem,
    SolverResult,
    aggregate_sqnr,
    chunk_problems,
    chunk_slices,
    damped_gram,
    equal_compression_kept,
    layer_signal,
)
from theory.errors import PvqError
from theory.integer_least_squares import QUANTIZERS, QuantGrid, exact_quantize, heuristic_quantize, mse_scale
from theory.rate_distortion import layer_spectrum, rd_sqnr_db
from theory.sdp_bound import park_boyd_bound, perspective_bound
from theory.sparse_least_squares import exact_prune, heuristic_prune, paper_box
from theory.sqnr import sqnr_db

QUANT_BOUND = "park_boyd"
PRUNE_BOUND = "perspective"
PRUNE_HEURISTICS = ("magnitude", "wanda", "sparsegpt")
FAMILIES = ("quantization", "pruning")
REFERENCE = ("reference", "gaussian_rd")
"""(family, method) of the Gaussian rate–distortion reference row of a layer."""
DEFAULT_TIME_LIMIT = 10.0
KINDS = {"exact": "exact", QUANT_BOUND: "bound", PRUNE_BOUND: "bound"}
"""Method -> kind (exact / bound); every other method is a heuristic."""
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
INTERVAL_LEVEL = 0.95
COLUMNS = ("family", "method", "kind", "sqnr_db", "sqnr_db_low95", "sqnr_db_high95", "sqnr_upper_db",
           "sqnr_upper_db_low95", "sqnr_upper_db_high95", "status", "optimal_chunks", "chunks", "rows", "gap",
           "seconds")  # fmt: skip
"""Columns of :func:`aggregate_records` and :func:`layer_bounds`, in order."""


@dataclass(frozen=True)
class ChunkRecord:
    """One method's result on one chunk of one row: ``result.value`` is its error, ``result.lower_bound``
    a certified lower bound of the chunk optimum (0 for heuristics); ``signal`` is the output energy of the
    whole row, ``w_rowᵀ(H + δI)w_row`` (module docstring)."""

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
    grid = QuantGrid.signed(bits, mse_scale(problem.weights, bits))
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
    ``max_chunks`` of :func:`theory.chunk_problem.chunk_slices` (all when None); each record carries its row's
    signal ``w_rowᵀ(H + δI)w_row`` on the damped Gram its chunk problem uses."""
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
    damped, _ = damped_gram(gram, relative_damping)
    signals = {row: layer_signal(matrix[row], damped) for row in selected}
    records = []
    for row, chunk, problem in chunk_problems(matrix, damped, opt_dim, selected, relative_damping=0.0):
        if chunk.start >= chunks[-1].stop:
            continue
        kept = equal_compression_kept(problem.size, bits, convention)
        families = {"quantization": quantization_results(problem, bits, time_limit, sdp, seed),
                    "pruning": pruning_results(problem, kept, time_limit, sdp)}
        records += [ChunkRecord(row, chunk, family, signals[row], result)
                    for family, results in families.items() for result in results]
    return records


def row_bootstrap_db(signals: np.ndarray, errors: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED, level: float = INTERVAL_LEVEL) -> tuple[float, float]:
    """Percentile-bootstrap interval (dB) of ``10·log10(Σ_r s_r / Σ_r E_r)`` over rows (Efron & Tibshirani,
    *An Introduction to the Bootstrap*, 1993, Sec. 13.3).

    ``resamples`` times, draw as many rows as given with replacement (``default_rng(seed)``) and take the
    relative error ``Σ E / Σ s`` of the draw; the interval is its ``(1 ∓ level)/2`` quantiles turned into SQNR
    (low dB from the high relative error). The same seed gives every method the same draws.
    """
    signals, errors = np.asarray(signals, dtype=np.float64), np.asarray(errors, dtype=np.float64)
    draws = np.random.default_rng(seed).integers(0, signals.size, size=(resamples, signals.size))
    relative = errors[draws].sum(axis=1) / signals[draws].sum(axis=1)
    low, high = np.quantile(relative, [(1 - level) / 2, (1 + level) / 2])
    return sqnr_db(1.0, float(high)), sqnr_db(1.0, float(low))


def _row_sums(group: Sequence[ChunkRecord]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``group``: its signal s_r (once), Σ_C error and Σ_C certified lower bound."""
    sums: dict[int, list[float]] = {}
    for record in group:
        entry = sums.setdefault(record.row, [record.signal, 0.0, 0.0])
        entry[1] += record.result.value
        entry[2] += record.result.lower_bound
    signals, errors, lowers = np.array(list(sums.values())).T
    return signals, errors, lowers


def aggregate_group(family: str, method: str, group: Sequence[ChunkRecord]) -> dict[str, Any]:
    """One (family, method) over its chunks: energy-weighted SQNR over rows with its bootstrap interval.

    ``sqnr_db = 10·log10(Σ_r s_r / Σ_r E_r)`` (module docstring); ``sqnr_upper_db`` from Σ certified lower bounds
    (NaN for heuristics); ``gap = (Σ error − Σ lower bound) / Σ error``; ``status`` "optimal" only when every
    chunk was solved to optimality, ``optimal_chunks`` counts them; ``seconds`` sums the solver times.
    """
    results = [record.result for record in group]
    signals, errors, lowers = _row_sums(group)
    interval = aggregate_sqnr(float(signals.sum()), results)
    kind = KINDS.get(method, "heuristic")
    optimal = sum(result.status == "optimal" for result in results)
    status = results[0].status if kind != "exact" else "optimal" if optimal == len(results) else "time_limit"
    error = interval.error_upper
    bounded = kind != "heuristic"
    low, high = row_bootstrap_db(signals, errors)
    upper_low, upper_high = row_bootstrap_db(signals, lowers) if bounded else (math.nan, math.nan)
    return {
        "family": family, "method": method, "kind": kind, "sqnr_db": interval.lower_db, "sqnr_db_low95": low,
        "sqnr_db_high95": high, "sqnr_upper_db": interval.upper_db if bounded else math.nan,
        "sqnr_upper_db_low95": upper_low, "sqnr_upper_db_high95": upper_high, "status": status,
        "optimal_chunks": optimal, "chunks": len(results), "rows": len(signals),
        "gap": (error - interval.error_lower) / error if bounded and error > 0 else math.nan,
        "seconds": sum(result.seconds for result in results),
    }  # fmt: skip


def aggregate_records(records: Sequence[ChunkRecord]) -> pd.DataFrame:
    """One row per (family, method) of ``records``: :func:`aggregate_group`, columns :data:`COLUMNS`."""
    groups: dict[tuple[str, str], list[ChunkRecord]] = {}
    for record in records:
        groups.setdefault((record.family, record.result.method), []).append(record)
    return pd.DataFrame([aggregate_group(family, method, group) for (family, method), group in groups.items()],
                        columns=list(COLUMNS))  # fmt: skip


def gaussian_reference(weight: np.ndarray, gram: np.ndarray, bits: float) -> dict[str, Any]:
    """The Gaussian rate–distortion reference of the whole layer as a row of :data:`COLUMNS`.

    ``sqnr_db = rd_sqnr_db(layer_spectrum(gram, W), bits)`` (:mod:`theory.rate_distortion`) over all rows of W;
    no interval, bound or chunks; ``rows`` is the layer's row count.
    """
    start = time.perf_counter()
    matrix = np.asarray(weight, dtype=np.float64)
    sqnr = rd_sqnr_db(layer_spectrum(gram, matrix), bits)
    family, method = REFERENCE
    return {
        "family": family, "method": method, "kind": "reference", "sqnr_db": sqnr, "sqnr_db_low95": math.nan,
        "sqnr_db_high95": math.nan, "sqnr_upper_db": math.nan, "sqnr_upper_db_low95": math.nan,
        "sqnr_upper_db_high95": math.nan, "status": "reference", "optimal_chunks": 0, "chunks": 0,
        "rows": matrix.shape[0], "gap": math.nan, "seconds": time.perf_counter() - start,
    }  # fmt: skip


def layer_bounds(
    weight: np.ndarray, gram: np.ndarray, bits: int, opt_dim: int = 32, rows: int = 16,
    max_chunks: int | None = None, convention: Convention = PAPER_CONVENTION,
    time_limit: float = DEFAULT_TIME_LIMIT, sdp: bool = True, seed: int = 0,
    relative_damping: float = DEFAULT_RELATIVE_DAMPING,
) -> pd.DataFrame:
    """Per-method layer output SQNR (dB) with its 95% interval over rows, status, gap and time, and last the
    layer's Gaussian rate–distortion reference (:func:`gaussian_reference`), all on ``H + δI``.

    Rows: a seeded random subset of ``rows`` output rows; chunks: the first ``max_chunks`` chunks of ``opt_dim``
    inputs of each row (all when None). Each chunk is a sub-problem with the rest of its row held at the
    original values; a method's SQNR is ``10·log10(Σ_r s_r / Σ_r Σ_C e_rC)`` over the rows sampled, with the
    rows' full output energies s_r as signal (module docstring).
    """
    records = solve_chunks(weight, gram, bits, opt_dim, rows, max_chunks, convention, time_limit, sdp, seed,
                           relative_damping)  # fmt: skip
    reference = gaussian_reference(weight, damped_gram(gram, relative_damping)[0], bits)
    return pd.concat([aggregate_records(records), pd.DataFrame([reference])], ignore_index=True)


def bounds_for_model(
    loaded: Any, layer_names: Sequence[str], bits_list: Sequence[int], opt_dim: int = 32, rows: int = 16,
    max_chunks: int | None = None, sdp_bits: Sequence[int] | None = None, sequences: int = 16,
    sequence_length: int = 512, batch_size: int = 4, convention: Convention = PAPER_CONVENTION,
    time_limit: float = DEFAULT_TIME_LIMIT, seed: int = 0, placement: Placement = ON_CPU,
    sdp_layers: Sequence[str] | None = None,
) -> pd.DataFrame:
    """:func:`layer_bounds` for each named linear layer of ``loaded`` (a ``LoadedModel``) and each b.

    Grams are captured once from ``sequences × sequence_length`` calibration tokens
    (:mod:`measure.data.calibration`), as ``placement`` says (:func:`measure.capture.placement.capture_placed`);
    the SDP bounds run only at ``sdp_bits`` and on ``sdp_layers`` (each: all when None). One row per (layer, b,
    method) with ``layer``, ``block``, ``role``, ``bits`` and the columns of :func:`layer_bounds`.
    """

    for bits in bits_list:
        check_bits(bits)
    arch = describe(loaded.model)
    refs = {ref.name: ref for ref in arch.linears if ref.expert_index is None}
    missing = [name for name in [*layer_names, *(sdp_layers or [])] if name not in refs]
    if missing or not layer_names:
        raise PvqError(f"no linear layer called {', '.join(missing) or '(none given)'}; "
                       "see `pvq info MODEL --linears` for the names")  # fmt: skip
    for name in layer_names:
        chunk_slices(refs[name].in_features, opt_dim)
        select_rows(refs[name].out_features, rows)
    protocol = for_model(CalibrationProtocol(sequences, sequence_length, batch_size), loaded)
    batches = calibration_batches(loaded, protocol)
    grams = capture_placed(loaded.model, batches, placement, arch=arch)
    frames = []
    for name in layer_names:
        ref = refs[name]
        weight = ref.weight().detach().double().cpu().numpy()
        gram = grams.gram_for(name).to_numpy()
        for bits in bits_list:
            sdp = (sdp_bits is None or bits in sdp_bits) and (sdp_layers is None or name in sdp_layers)
            frame = layer_bounds(weight, gram, bits, opt_dim, rows, max_chunks, convention, time_limit, sdp, seed)
            frames.append(frame.assign(layer=name, block=ref.block_index, role=ref.role, bits=bits))
    return pd.concat(frames, ignore_index=True)
