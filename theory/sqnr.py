"""SQNR of quantization and magnitude pruning on a distribution (Kuzmin et al., 2023, Sec. 3, Eq. 3).

``SQNR_dB = 10·log10(E[W²] / E[(W - F(W))²])`` for a compressor F. For per-tensor grids the expectation
is an exact sum over rounding cells: with sorted levels q_i and midpoints m_i, the cell (m_{i-1}, m_i]
maps to q_i (the outer cells saturate) and contributes ``M_2 - 2 q_i M_1 + q_i² M_0`` from the
distribution's closed-form partial moments. Magnitude pruning at sparsity p zeroes |w| < t with
``t = F⁻¹(½ + p/2)``, so its error is ``E[W² 1{|W| < t}]``. Block formats (MX, NF4) scale each block by
its own maximum; their expectation is over blocks of i.i.d. samples, estimated by Monte Carlo with
the standard error of the block-mean squared error carried to dB by the delta method.

Integer-grid convention (as the paper's code, ``SymmetricUniformQuantizer``): codes
``{-2^(b-1), …, 2^(b-1)-1}``, scale ``s = c / (2^(b-1) - 1)`` for a clipping range c, so the positive
edge is c and the negative edge is ``-c·2^(b-1)/(2^(b-1)-1)``; the MSE is taken over that full grid,
extra negative level included. ``clip`` is c in σ units. The zero-point grid uses codes 0..2^b-1
with value ``(q - z)·s``; its ``clip`` is the half-range ``(2^b - 1)·s/2`` in σ units.
On N(0, 1) at 4 bits with MSE-optimal clipping this convention gives 19.26 dB (the paper reports
19.1 dB); the 15-level grid ``{-7, …, 7}·s`` gives 18.90 dB and the 16-level mid-rise grid
``{±½, …, ±15/2}·s`` 19.38 dB, so the paper's value sits between the conventions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from theory import accounting
from theory.clip_search import minimize_clip
from theory.distributions import Distribution, Empirical
from theory.errors import PvqError, choose
from theory.formats import MX_ELEMENTS, TERNARY_LEVELS, Format, get_format, int_grid, mx_quantize

# The clip scan runs over [LOW_FRACTION·median|W|, HIGH_FACTOR·q_{1-TAIL}(|W|)], in σ units.
LOW_FRACTION = 0.1
HIGH_FACTOR = 1.25
TAIL = 1e-10
DEFAULT_BLOCKS = 1 << 15


@dataclass(frozen=True, eq=False)
class GridFit:
    """A fitted per-tensor grid: absolute levels, clip in σ units, MSE, SQNR and the zero point if any."""

    levels: np.ndarray
    clip_sigma: float
    mse: float
    sqnr_db: float
    zero_point: int | None = None


def sqnr_db(signal: float, error: float) -> float:
    """Signal-to-noise ratio ``10·log10(signal / error)`` in dB, for any pair of energies of one signal: E[W²] over
    the MSE of a compressor on a distribution, or Σ_rows wᵀHw over Σ_rows of the output error of a layer (Kuzmin
    et al. 2023, Sec. 4). +∞ at zero error, −∞ at zero signal; a negative energy is a PvqError."""
    if signal < 0 or error < 0:
        raise PvqError(f"signal and error energies must be >= 0, got {signal!r} and {error!r}")
    if error == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10.0 * math.log10(signal / error)


def relative_error_db(relative_error: ArrayLike) -> Any:
    """``−10·log10 e`` in dB of a relative error e = error energy / signal energy (the SQNR it implies); +∞ at
    e = 0. A scalar gives a float (``math.log10``), an array an array (``numpy.log10``)."""
    if np.ndim(relative_error) == 0:
        value = float(relative_error)
        return math.inf if value == 0 else -10.0 * math.log10(value)
    with np.errstate(divide="ignore"):
        return -10.0 * np.log10(np.asarray(relative_error, dtype=np.float64))


def grid_mse(dist: Distribution, levels: np.ndarray) -> float:
    """``E[(W - Q(W))²]`` for nearest rounding onto the sorted ``levels`` (saturating): Σ_i ∫_cell (w - q_i)² f."""
    levels = np.asarray(levels, dtype=float)
    midpoints = 0.5 * (levels[1:] + levels[:-1])
    lower = np.concatenate([[-np.inf], midpoints])
    upper = np.concatenate([midpoints, [np.inf]])
    m0, m1, m2 = dist.partial_moments(lower, upper)
    return float(np.sum(m2 - 2.0 * levels * m1 + levels * levels * m0))


def _fit(dist: Distribution, levels: np.ndarray, clip_sigma: float, zero_point: int | None = None) -> GridFit:
    mse = grid_mse(dist, levels)
    return GridFit(levels, clip_sigma, mse, sqnr_db(dist.second_moment(), mse), zero_point)


def _clip_bounds(dist: Distribution) -> tuple[float, float]:
    sigma = dist.std()
    return (LOW_FRACTION * dist.abs_quantile(0.5) / sigma, HIGH_FACTOR * dist.abs_quantile(1.0 - TAIL) / sigma)


def fit_scale(dist: Distribution, unit_levels: np.ndarray, edge: float, zero_point: int | None = None) -> GridFit:
    """MSE-optimal scale for ``unit_levels``: levels ``unit_levels·c·σ/edge`` with c minimizing the MSE.

    ``edge`` is the unit value that lands on the clipping range c (the largest level for symmetric
    sets, ``2^(b-1)-1`` for the signed integer grid). Search: :func:`theory.clip_search.minimize_clip`.
    """
    sigma = dist.std()
    unit_levels = np.asarray(unit_levels, dtype=float)

    def mse_at(clip: float) -> float:
        return grid_mse(dist, unit_levels * (clip * sigma / edge))

    clip, _ = minimize_clip(mse_at, *_clip_bounds(dist))
    return _fit(dist, unit_levels * (clip * sigma / edge), clip, zero_point)


def fit_integer_grid(dist: Distribution, bits: int, symmetric: bool = True) -> GridFit:
    """MSE-optimal INT-b grid: the signed grid over c, or the zero-point grid over (z, s) jointly.

    For the zero-point grid of a tensor (:class:`Empirical`) every integer z in 0..2^b-1 gets its own
    scale search. For a symmetric law the centred z = 2^(b-1) is used: any other z is the same lattice
    with levels moved from one tail to the other, and the tests check by exhaustive search over z
    that the centred one is optimal (it then equals the signed grid).
    """
    codes = int_grid(bits, symmetric=symmetric)
    if symmetric:
        return fit_scale(dist, codes, edge=2.0 ** (bits - 1) - 1)
    zero_points = range(2**bits) if isinstance(dist, Empirical) else [2 ** (bits - 1)]
    fits = [fit_scale(dist, codes - z, edge=(2**bits - 1) / 2.0, zero_point=z) for z in zero_points]
    return min(fits, key=lambda fit: fit.mse)


def optimal_clip(dist: Distribution, bits: int, symmetric: bool = True) -> float:
    """The MSE-optimal clipping range of INT-b in σ units (see :func:`fit_integer_grid` for the grids)."""
    return fit_integer_grid(dist, bits, symmetric).clip_sigma


def ternary_fit(dist: Distribution) -> GridFit:
    """BitNet b1.58 absmean ternary: levels ``{-γ, 0, γ}`` with ``γ = E|W|`` (its clip is γ/σ)."""
    gamma = dist.abs_mean()
    return _fit(dist, TERNARY_LEVELS * gamma, gamma / dist.std())


def format_fit(dist: Distribution, fmt: Format | np.ndarray, clip: float | None = None) -> GridFit:
    """The grid of a per-tensor format (or of unit levels) on ``dist``: at ``clip`` σ, or fitted if None."""
    if isinstance(fmt, np.ndarray):
        unit, edge, zero_point = np.sort(fmt.astype(float)), float(np.max(fmt)), None
        if edge <= 0:
            raise PvqError("a grid needs at least one positive level to set its scale")
    elif not fmt.analytic:
        raise PvqError(
            f"{fmt.name} scales each block of {fmt.block_size} separately; use block_sqnr_db "
            f"(or mx_sqnr_db) for its Monte Carlo SQNR"
        )
    elif fmt.scaling == "absmean" and clip is None:
        return ternary_fit(dist)
    elif fmt.symmetric_grid:
        unit, edge, zero_point = fmt.unit_levels, float(np.max(fmt.unit_levels)), None
    else:
        bits = int(fmt.element_bits)
        if clip is None:
            return fit_integer_grid(dist, bits, symmetric=False)
        zero_point = 2 ** (bits - 1)
        unit, edge = fmt.unit_levels - zero_point, (2**bits - 1) / 2.0
    if clip is None:
        return fit_scale(dist, unit, edge, zero_point)
    if not (math.isfinite(clip) and clip > 0):
        raise PvqError(f"clip must be a positive number of σ, got {clip!r}")
    return _fit(dist, unit * (clip * dist.std() / edge), clip, zero_point)


def quantization_sqnr_db(dist: Distribution, fmt_or_grid: str | Format | np.ndarray,
                         clip: float | None = None) -> float:
    """SQNR (dB) of a per-tensor format on ``dist`` at clipping range ``clip`` (σ units), MSE-optimal if None.

    ``fmt_or_grid``: a name in :data:`theory.formats.FORMATS` (``"int4"``, ``"int4_asym"``,
    ``"fp8_e4m3"``, ``"ternary"``, …), a :class:`Format`, or an array of unit levels whose largest
    value lands on the clip.
    """
    fmt = get_format(fmt_or_grid) if isinstance(fmt_or_grid, str) else fmt_or_grid
    return format_fit(dist, fmt, clip).sqnr_db


def pruning_sqnr_db(dist: Distribution, sparsity: float) -> float:
    """SQNR (dB) of magnitude pruning at ``sparsity``: ``10·log10(E[W²] / E[W² 1{|W| < F⁻¹(½ + p/2)}])``."""
    accounting.check_sparsity(sparsity)
    return sqnr_db(dist.second_moment(), dist.small_magnitude_energy(sparsity))


def block_sqnr_db(dist: Distribution, quantize: Callable[[np.ndarray], np.ndarray], block_size: int,
                  n_blocks: int = DEFAULT_BLOCKS, seed: int = 0) -> tuple[float, float]:
    """Monte Carlo SQNR (dB) of a block quantizer over ``n_blocks`` blocks of i.i.d. draws, and its standard error.

    Blocks are independent, so ``Ē = mean_j e_j`` (e_j the mean squared error of block j) has standard
    error ``sd(e_j)/√n_blocks``; the signal power E[W²] is exact, so ``se_dB = (10/ln 10)·se(Ē)/Ē``.
    """
    if n_blocks < 2:
        raise PvqError(f"Monte Carlo needs at least 2 blocks, got {n_blocks}")
    rng = np.random.default_rng(seed)
    blocks = dist.sample(n_blocks * block_size, rng).reshape(n_blocks, block_size)
    block_errors = np.mean((blocks - quantize(blocks)) ** 2, axis=1)
    mean_error = float(block_errors.mean())
    if mean_error == 0:
        return math.inf, 0.0
    standard_error = float(block_errors.std(ddof=1)) / math.sqrt(n_blocks)
    return sqnr_db(dist.second_moment(), mean_error), 10.0 / math.log(10.0) * standard_error / mean_error


def mx_sqnr_db(dist: Distribution, element: str, n_blocks: int = DEFAULT_BLOCKS,
               seed: int = 0) -> tuple[float, float]:
    """``(SQNR_dB, standard_error_dB)`` of an OCP MX v1.0 format (32-element blocks, shared 2^k scale)."""
    choose("MX element", element, MX_ELEMENTS)
    return block_sqnr_db(dist, lambda x: mx_quantize(x, element), 32, n_blocks, seed)


def format_sqnr_db(dist: Distribution, fmt: Format, n_blocks: int = DEFAULT_BLOCKS,
                   seed: int = 0) -> tuple[float, float, float]:
    """``(SQNR_dB, standard_error_dB, clip_sigma)`` of any registered format: exact for per-tensor grids
    (standard error 0, MSE-optimal clip or absmean), Monte Carlo for block formats (clip NaN)."""
    if fmt.analytic:
        fit = format_fit(dist, fmt)
        return fit.sqnr_db, 0.0, fit.clip_sigma
    value, error = block_sqnr_db(dist, fmt.block_quantize, fmt.block_size, n_blocks, seed)
    return value, error, math.nan
