"""The per-layer compression problem of Kuzmin et al. (2023, Sec. 4), cut into row chunks.

A linear layer with weight ``W`` (rows = output channels) and calibration inputs ``X`` has output error
``‖X(Ŵ − W)ᵀ‖_F² = Σ_rows (ŵ − w)ᵀ H (ŵ − w)`` with the Gram ``H = XᵀX`` (Kuzmin et al., Sec. 4): rows are
independent, so the layer problem is exactly a sum of row problems. A row of d weights is cut into
contiguous chunks of ``opt_dim`` indices C (the paper's code likewise splits the input channels into chunks).

What a chunk result bounds
--------------------------
* **Sub-problem (exact).** Compress only chunk C of a row and hold the other weights at their original
  values. The error vector e is zero outside C, so ``eᵀHe = e_Cᵀ H_CC e_C``: the chunk problem with the
  Gram restricted to C *is* this sub-problem, and its optimum and bounds are exact statements about it.
  Its output SQNR uses the full-row signal ``wᵀHw``.
* **Block-diagonal surrogate (the paper's layer numbers).** Compressing every chunk gives
  ``eᵀHe = Σ_C e_Cᵀ H_CC e_C + Σ_{C≠D} e_Cᵀ H_CD e_D``. Dropping the cross terms leaves a separable
  objective whose optimum is exactly the sum of the chunk optima, so summed chunk bounds are exact
  bounds of the surrogate with Gram ``blockdiag(H_CC)``; the cross terms have no sign, so they are not
  bounds of the full-row optimum. Its SQNR, like the sub-problem's, uses the full-row signal ``wᵀHw``
  (:func:`aggregate_sqnr`), not the surrogate's own energy ``Σ_C w_Cᵀ H_CC w_C``.
  A concrete compressed row assembled from chunk solutions has the true error ``eᵀHe``
  (:func:`row_error`), an upper bound of the full-row optimum.

Damping
-------
Solvers need a positive definite Gram; calibration Grams are often singular (dead or collinear inputs).
``damped_gram`` adds ``δ = λ·mean(diag H)`` to the diagonal (GPTQ's ``percdamp``, Frantar et al. 2023,
λ = 0.01 by default; an all-zero Gram gets ``δ = λ``). ``H + δI = X̃ᵀX̃`` with ``X̃ = [X; √δ·I]``, so every
damped number is an exact statement about the calibration data augmented by ``√δ·I`` rows. Since
``H + δI ⪰ H``, a damped lower bound is *not* a lower bound of the undamped problem, while a concrete
compressed chunk evaluated with the undamped Gram keeps its meaning. With λ = 0 every chunk Gram must itself
be positive definite (checked per chunk), else a PvqError asks for damping.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from theory.accounting import (
    PAPER_CONVENTION,
    Convention,
    check_bits,
    check_sparsity,
    equal_compression_sparsity,
)
from theory.errors import PvqError, choose
from theory.sqnr import sqnr_db

DEFAULT_RELATIVE_DAMPING = 1e-2
STATUSES = ("optimal", "time_limit", "bound", "heuristic")
# Eigenvalues down to −1e-6·λ_max count as rounding of a PSD Gram (float32 accumulation is ~1e-7).
NEGATIVE_TOLERANCE = 1e-6
# Largest condition number for which a Cholesky factor gives trustworthy 1e-9-relative objectives.
MAX_CONDITION = 1e12


@dataclass(frozen=True)
class ChunkProblem:
    """One row chunk: weights ``w`` (n,) and the damped Gram ``H`` (n, n); objective ``(ŵ−w)ᵀH(ŵ−w)``."""

    weights: np.ndarray
    gram: np.ndarray
    damping: float

    @property
    def size(self) -> int:
        return int(self.weights.shape[0])

    @property
    def signal(self) -> float:
        """``w_Cᵀ H_CC w_C``: the chunk's own energy (the scale of its errors; the SQNR numerator is the whole
        row's ``wᵀHw``, :func:`aggregate_sqnr`)."""
        return float(self.weights @ self.gram @ self.weights)

    def error(self, compressed: np.ndarray) -> float:
        """``(ŵ − w)ᵀ H (ŵ − w)``: output error of the compressed chunk (Kuzmin et al., Sec. 4)."""
        difference = np.asarray(compressed, dtype=np.float64) - self.weights
        return float(difference @ self.gram @ difference)


@dataclass(frozen=True)
class SolverResult:
    """What every solver returns; ``value`` is the error of ``solution``, so always an upper bound.

    ``code`` holds the integers of a quantized chunk or the boolean keep-mask of a pruned one;
    ``lower_bound`` is a proven lower bound of the optimum (0 for heuristics: H is PSD);
    ``status`` is one of :data:`STATUSES` — ``"optimal"`` only when the search finished with a proof.
    """

    method: str
    value: float
    solution: np.ndarray
    code: np.ndarray
    status: str
    lower_bound: float
    nodes: int
    seconds: float

    def __post_init__(self) -> None:
        choose("solver status", self.status, STATUSES)

    @property
    def gap(self) -> float:
        """Relative optimality gap ``(value − lower_bound) / value`` (0 when value is 0)."""
        return (self.value - self.lower_bound) / self.value if self.value > 0 else 0.0


@dataclass(frozen=True)
class SqnrInterval:
    """Output SQNR bounds in dB from error bounds: a lower error bound gives the upper SQNR bound."""

    signal: float
    error_lower: float
    error_upper: float

    @property
    def lower_db(self) -> float:
        return sqnr_db(self.signal, self.error_upper)

    @property
    def upper_db(self) -> float:
        return sqnr_db(self.signal, self.error_lower)


def damped_gram(gram: np.ndarray, relative_damping: float = DEFAULT_RELATIVE_DAMPING) -> tuple[np.ndarray, float]:
    """``(H + δI, δ)`` with ``δ = λ·mean(diag H)`` (λ = ``relative_damping``; δ = λ for an all-zero H).

    Checks what is cheap at layer size: square, finite, symmetric (to 1e-8 relative; symmetrized
    exactly), non-negative diagonal. Positive definiteness is checked per chunk (:func:`make_chunk_problem`).
    """
    matrix = np.asarray(gram, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise PvqError(f"the Gram must be a non-empty square matrix, got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise PvqError("the Gram has NaN or infinite entries; recompute it from finite activations")
    if not (isinstance(relative_damping, int | float) and math.isfinite(relative_damping)
            and relative_damping >= 0):
        raise PvqError(f"relative damping must be a finite number >= 0, got {relative_damping!r}")
    if np.abs(matrix - matrix.T).max() > 1e-8 * float(np.abs(matrix).max()):
        raise PvqError("the Gram is not symmetric; pass H = XᵀX")
    diagonal = np.diag(matrix)
    if diagonal.min() < 0:
        raise PvqError(f"the Gram has a negative diagonal entry ({diagonal.min():.3g}); pass H = XᵀX")
    mean_diagonal = float(diagonal.mean())
    damping = relative_damping * (mean_diagonal if mean_diagonal > 0 else 1.0)
    return (matrix + matrix.T) / 2 + damping * np.eye(matrix.shape[0]), damping


def make_chunk_problem(weights: np.ndarray, gram: np.ndarray, damping: float = 0.0) -> ChunkProblem:
    """A chunk problem from weights and a Gram, adding an *absolute* ``damping·I`` (already chosen).

    Use :func:`damped_gram` or :func:`chunk_problems` to pick the damping from a relative λ. The Gram
    must be positive semidefinite up to rounding (eigenvalues >= −1e-6·λ_max) and, damping included,
    positive definite with condition number below 1e12; otherwise a PvqError says what to do.
    """
    vector = np.asarray(weights, dtype=np.float64)
    if vector.ndim != 1 or vector.size == 0:
        raise PvqError(f"chunk weights must be a non-empty vector, got shape {vector.shape}")
    if not np.all(np.isfinite(vector)):
        raise PvqError("chunk weights have NaN or infinite entries")
    matrix = np.asarray(gram, dtype=np.float64)
    if matrix.shape != (vector.size, vector.size):
        raise PvqError(f"Gram shape {matrix.shape} does not match {vector.size} chunk weights")
    if not np.all(np.isfinite(matrix)):
        raise PvqError("the chunk Gram has NaN or infinite entries; recompute it from finite activations")
    if not (math.isfinite(damping) and damping >= 0):
        raise PvqError(f"absolute damping must be a finite number >= 0, got {damping!r}")
    matrix = (matrix + matrix.T) / 2
    eigenvalues = np.linalg.eigvalsh(matrix)
    if eigenvalues[0] < -NEGATIVE_TOLERANCE * max(eigenvalues[-1], 0.0):
        raise PvqError(
            f"the Gram is not positive semidefinite (smallest eigenvalue {eigenvalues[0]:.3g}); pass H = XᵀX"
        )
    eigenvalues = eigenvalues + damping
    if not eigenvalues[0] > 0 or eigenvalues[-1] > MAX_CONDITION * eigenvalues[0]:
        raise PvqError(
            "the chunk Gram is singular or too ill-conditioned to solve (eigenvalues "
            f"{eigenvalues[0]:.3g} .. {eigenvalues[-1]:.3g}); use a relative damping > 0"
        )
    return ChunkProblem(weights=vector, gram=matrix + damping * np.eye(vector.size), damping=float(damping))


def chunk_slices(width: int, opt_dim: int) -> list[slice]:
    """Contiguous chunks ``[0, opt_dim), [opt_dim, 2·opt_dim), …`` of a row of ``width`` weights.

    The last chunk is shorter when ``opt_dim`` does not divide ``width``.
    """
    if not (isinstance(width, int) and width >= 1):
        raise PvqError(f"the layer width must be a positive integer, got {width!r}")
    if not (isinstance(opt_dim, int) and opt_dim >= 1):
        raise PvqError(f"opt-dim must be a positive integer, got {opt_dim!r}")
    if opt_dim > width:
        raise PvqError(
            f"opt-dim {opt_dim} is larger than the layer's {width} input channels; use opt-dim <= {width}"
        )
    return [slice(start, min(start + opt_dim, width)) for start in range(0, width, opt_dim)]


def chunk_problems(
    weight: np.ndarray,
    gram: np.ndarray,
    opt_dim: int,
    rows: list[int] | None = None,
    relative_damping: float = DEFAULT_RELATIVE_DAMPING,
) -> Iterator[tuple[int, slice, ChunkProblem]]:
    """``(row, chunk, problem)`` for every selected row of ``weight`` (out, in) and every chunk.

    The damping δ is chosen once from the full layer Gram (:func:`damped_gram`), so every chunk sees the
    same augmented data ``[X; √δ·I]``; each problem uses ``(H + δI)_CC`` (the exact sub-problem, module
    docstring).
    """
    matrix = np.asarray(weight, dtype=np.float64)
    if matrix.ndim != 2:
        raise PvqError(f"the layer weight must be a matrix (out, in), got shape {matrix.shape}")
    damped, _ = damped_gram(gram, relative_damping)
    if damped.shape[0] != matrix.shape[1]:
        raise PvqError(f"Gram of size {damped.shape[0]} does not match the weight's {matrix.shape[1]} inputs")
    selected = range(matrix.shape[0]) if rows is None else rows
    slices = chunk_slices(matrix.shape[1], opt_dim)
    for row in selected:
        if not 0 <= row < matrix.shape[0]:
            raise PvqError(f"row {row} is outside the layer's {matrix.shape[0]} output channels")
        for chunk in slices:
            yield row, chunk, make_chunk_problem(matrix[row, chunk], damped[chunk, chunk])


def kept_count(size: int, sparsity: float) -> int:
    """``k = round(n·(1 − sparsity))`` weights kept of a chunk of n; must satisfy ``0 <= k < n``."""
    check_sparsity(sparsity)
    kept = round(size * (1 - sparsity))
    check_kept(size, kept)
    return kept


def check_kept(size: int, kept: int) -> None:
    """Raise a clear error unless ``0 <= kept < size`` (keeping all n weights is not pruning)."""
    if not (isinstance(kept, int | np.integer) and 0 <= kept < size):
        raise PvqError(f"the number of kept weights must be an integer in 0..{size - 1} for a chunk of {size}, "
                       f"got {kept!r}")


def equal_compression_kept(size: int, bits: int, convention: Convention = PAPER_CONVENTION) -> int:
    """Weights kept in a chunk of n when pruning matches b-bit quantization in size.

    ``k = round(n·(1 − p))`` with ``p = equal_compression_sparsity(b, convention)``; with the paper's
    free-mask convention ``p = 1 − b/16`` (Kuzmin et al., Sec. 3), e.g. b = 4, n = 32 → k = 8.
    """
    check_bits(bits)
    return kept_count(size, equal_compression_sparsity(float(bits), convention))


def row_error(gram: np.ndarray, weight_row: np.ndarray, compressed_row: np.ndarray) -> float:
    """True output error ``(ŵ − w)ᵀ H (ŵ − w)`` of a whole compressed row under the full Gram."""
    difference = np.asarray(compressed_row, dtype=np.float64) - np.asarray(weight_row, dtype=np.float64)
    return float(difference @ np.asarray(gram, dtype=np.float64) @ difference)




def layer_signal(weight: np.ndarray, gram: np.ndarray) -> float:
    """``Σ_rows wᵀHw = tr(W H Wᵀ)``: the output energy of a layer (or of a subset of its rows)."""
    matrix = np.atleast_2d(np.asarray(weight, dtype=np.float64))
    return float(np.einsum("ri,ij,rj->", matrix, np.asarray(gram, dtype=np.float64), matrix))


def aggregate_sqnr(signal: float, results: list[SolverResult]) -> SqnrInterval:
    """Output SQNR interval of rows: ``signal / Σ value`` (lower dB) to ``signal / Σ lower_bound`` (upper dB).

    ``signal`` is the full output energy of the rows the results belong to, ``layer_signal(W_rows, H)``
    (``Σ_r w_rᵀHw_r``, each row counted once), so the ratio is the energy-weighted relative error
    ``Σ_r Σ_C e_rC / Σ_r w_rᵀHw_r``. Row sums are exact because rows are independent. What it bounds (module
    docstring): with one chunk C of each row, the exact sub-problem "compress only C, the rest of the row
    original"; with every chunk of each row, the block-diagonal surrogate of those rows (the paper's numbers),
    over the same full-row signal, hence comparable in level with a whole layer's ``tr(ΔW H ΔWᵀ)/tr(W H Wᵀ)``.
    """
    if not results:
        raise PvqError("no chunk results to aggregate")
    return SqnrInterval(
        signal=float(signal),
        error_lower=sum(result.lower_bound for result in results),
        error_upper=sum(result.value for result in results),
    )
