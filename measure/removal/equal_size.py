"""Equal size between block removal and compression, and reading error curves at a size (pure table logic).

**One size axis.** Sizes are bits per *decoder* parameter (every parameter of the blocks, 16 bits each in the
original). Removing blocks that hold a fraction f of the decoder parameters keeps b(f) = 16(1 − f) bits per
decoder parameter (:func:`theory.accounting.removal_bits_per_weight`). A method compresses only the blocks'
linear weights (P_lin of the P_dec decoder parameters; norms and biases stay at 16 bits), so at ``c`` bits per
linear weight it costs B(c) = (c·P_lin + 16·(P_dec − P_lin)) / P_dec bits per decoder parameter
(:meth:`DecoderSizes.decoder_bits`); equal size with a removal means c = B⁻¹(b(f))
(:meth:`DecoderSizes.linear_bits`). Pruning at sparsity s costs c = 16(1 − s) bits per linear weight with a free
mask (Kuzmin et al. 2023, Sec. 3) or c = 16(1 − s) + H(s) with an entropy-coded one
(:func:`theory.accounting.sparse_bits_per_weight`), so its equal-size sparsity depends on the mask convention.

**Reading a curve at a size.** A method measured at integer bit widths gives a curve of (size, quality) points,
quality in dB (higher is better: an SQNR, or −10·log10 KL). :func:`value_at` returns the point at the size when
one sits there (to :data:`SIZE_TOLERANCE`), else the linear interpolation in dB between the two neighbouring
points that bracket it, provided they are at most one bit apart (:data:`MAX_BRACKET_BITS`); otherwise the method
has no value at that size. :func:`equivalent_bits` inverts a curve: the size at which the method's quality equals
a given one, read off the same piecewise-linear curve between points at most one bit apart (a wider gap gives
no value: the missing width must be measured); outside the curve's range it reports the end point and says on
which side (``below``: worse than the method at its smallest size; never extrapolated).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from theory.accounting import BASE_BITS, Convention, equal_compression_sparsity, removal_bits_per_weight
from theory.errors import PvqError, choose

SIZE_TOLERANCE = 1e-6
"""Bits per parameter within which a measured point sits at a size."""
MAX_BRACKET_BITS = 1.0 + 1e-9
"""Two points bracket a size for interpolation only when they are at most one bit per parameter apart."""
MASK_CONVENTIONS = {"free": Convention("none"), "entropy": Convention("entropy"), "bitmap": Convention("bitmask")}
"""Mask conventions of the removal study by name: free (the paper's), entropy-coded (H(s) bits per weight) and an
uncompressed bitmap (1 bit per weight)."""


def mask_convention(name: str) -> Convention:
    """The :class:`theory.accounting.Convention` called ``name`` (PvqError naming the choices otherwise)."""
    choose("mask convention", name, MASK_CONVENTIONS)
    return MASK_CONVENTIONS[name]


@dataclass(frozen=True)
class DecoderSizes:
    """Parameter counts of the decoder (all blocks) and of its linear weights (what the methods compress)."""

    decoder: int
    linear: int

    def __post_init__(self) -> None:
        if not 0 < self.linear <= self.decoder:
            raise PvqError(f"need 0 < linear weights <= decoder parameters, got {self.linear} and {self.decoder}")

    def decoder_bits(self, linear_bits: float) -> float:
        """B(c) = (c·P_lin + 16·(P_dec − P_lin)) / P_dec bits per decoder parameter."""
        return (linear_bits * self.linear + BASE_BITS * (self.decoder - self.linear)) / self.decoder

    def linear_bits(self, decoder_bits: float) -> float:
        """B⁻¹(b) = (b·P_dec − 16·(P_dec − P_lin)) / P_lin bits per linear weight."""
        return (decoder_bits * self.decoder - BASE_BITS * (self.decoder - self.linear)) / self.linear

    def equal_size(self, removed_fraction: float) -> dict[str, float]:
        """Removed fraction f → b(f) = 16(1 − f) per decoder parameter, and the equal-size bits per linear
        weight B⁻¹(b(f))."""
        bits = removal_bits_per_weight(removed_fraction)
        return {"removed_fraction": removed_fraction, "bits_per_decoder_parameter": bits,
                "bits_per_linear_weight": self.linear_bits(bits)}  # fmt: skip

    def sparsity(self, removed_fraction: float, convention: str) -> float:
        """The pruning sparsity whose size equals the removal of fraction f under a named mask convention."""
        linear = self.equal_size(removed_fraction)["bits_per_linear_weight"]
        return equal_compression_sparsity(linear, mask_convention(convention))


def value_at(curve: pd.DataFrame, size: float) -> dict[str, float | bool] | None:
    """``quality_db`` of ``curve`` (columns bits_per_decoder_parameter, quality_db) at ``size`` (module docstring),
    or None.

    Returns quality_db, the bracketing sizes ``low_bits``/``high_bits`` (equal when a point sits at the size)
    and ``interpolated``."""
    points = curve.sort_values("bits_per_decoder_parameter")
    bits = points["bits_per_decoder_parameter"].to_numpy(float)
    quality = points["quality_db"].to_numpy(float)
    at = np.flatnonzero(np.abs(bits - size) <= SIZE_TOLERANCE)
    if at.size:
        point = float(bits[at[0]])
        return {"quality_db": float(quality[at[0]]), "low_bits": point, "high_bits": point, "interpolated": False}
    below, above = np.flatnonzero(bits < size), np.flatnonzero(bits > size)
    if not below.size or not above.size:
        return None
    low, high = below[-1], above[0]
    if bits[high] - bits[low] > MAX_BRACKET_BITS:
        return None
    weight = (size - bits[low]) / (bits[high] - bits[low])
    value = (1 - weight) * quality[low] + weight * quality[high]
    return {"quality_db": float(value), "low_bits": float(bits[low]), "high_bits": float(bits[high]),
            "interpolated": True}  # fmt: skip


def equivalent_bits(curve: pd.DataFrame, quality_db: float) -> tuple[float, str]:
    """The size at which ``curve`` reaches ``quality_db`` (first crossing from the small end), and its censoring:
    ``""`` (read off the curve), ``"below"`` (worse than the curve's smallest size: that size is returned),
    ``"above"`` (better than its largest size: that size is returned) or ``"gap"`` (the crossing lies between two
    points more than :data:`MAX_BRACKET_BITS` apart: NaN, never interpolated; measure the missing width)."""
    points = curve.sort_values("bits_per_decoder_parameter")
    bits = points["bits_per_decoder_parameter"].to_numpy(float)
    quality = points["quality_db"].to_numpy(float)
    if not bits.size or math.isnan(quality_db):
        return math.nan, ""
    if quality_db <= quality[0]:
        return float(bits[0]), "below" if quality_db < quality[0] else ""
    for k in range(1, len(bits)):
        if quality[k] >= quality_db:
            if bits[k] - bits[k - 1] > MAX_BRACKET_BITS:
                return math.nan, "gap"
            weight = (quality_db - quality[k - 1]) / (quality[k] - quality[k - 1])
            return float(bits[k - 1] + weight * (bits[k] - bits[k - 1])), ""
    return float(bits[-1]), "above"


def bracketing_widths(linear_bits_of: dict[int, float], target: float) -> tuple[int, int] | None:
    """Two consecutive integer widths b, b + 1 (keys of ``linear_bits_of``: a width's bits per linear weight,
    overheads included) whose costs bracket ``target``, or None."""
    for low in sorted(linear_bits_of):
        high = low + 1
        if high in linear_bits_of and linear_bits_of[low] <= target <= linear_bits_of[high]:
            return low, high
    return None


REFINE_MOVES = 8
"""Row exchanges tried per pair of row costs when :func:`row_mix` closes its last gap."""


def row_mix(rows: list[int], low_cost: list[float], high_cost: list[float], target_bits: float
            ) -> tuple[list[int], float]:  # fmt: skip
    """How many leading rows of each layer take the high width so that the layers together cost ``target_bits``.

    Layer ℓ has ``rows[ℓ]`` rows costing ``low_cost[ℓ]`` or ``high_cost[ℓ]`` bits each. Every layer gets the same
    fraction α of its rows at the high width (k_ℓ = ⌊α·rows_ℓ⌋); single rows are then moved up while that brings
    the total closer to the target (largest remainder first), and finally up to :data:`REFINE_MOVES` rows of one
    layer are exchanged against rows of another with a different step when that closes the gap further (with
    steps of 576 and 1536 bits the gap falls to at most 96 bits, half their common divisor). Returns (k per layer,
    total bits − target)."""
    base = sum(r * c for r, c in zip(rows, low_cost, strict=True))
    step = [h - c for h, c in zip(high_cost, low_cost, strict=True)]
    span = sum(r * s for r, s in zip(rows, step, strict=True))
    if not base - 1e-9 <= target_bits <= base + span + 1e-9:
        raise PvqError(f"{target_bits:g} bits lie outside what the two widths reach ({base:g}..{base + span:g})")
    alpha = (target_bits - base) / span if span > 0 else 0.0
    counts = [min(r, math.floor(alpha * r)) for r in rows]
    remainders = sorted(range(len(rows)), key=lambda i: alpha * rows[i] - counts[i], reverse=True)
    total = base + sum(k * s for k, s in zip(counts, step, strict=True))
    for i in remainders:
        if counts[i] < rows[i] and abs(total + step[i] - target_bits) < abs(total - target_bits):
            counts[i] += 1
            total += step[i]
    return _exchange_rows(rows, step, counts, total, target_bits)


def _exchange_rows(rows: list[int], step: list[float], counts: list[int], total: float, target: float
                   ) -> tuple[list[int], float]:  # fmt: skip
    """Close the gap of :func:`row_mix` by moving ``up`` rows of one layer up and ``down`` rows of another down."""
    by_step = {}
    for i, s in enumerate(step):
        by_step.setdefault(s, i)
    best = (abs(total - target), 0, 0, 0, 0)
    for i in by_step.values():
        for j in by_step.values():
            if i == j:
                continue
            for up in range(REFINE_MOVES + 1):
                for down in range(REFINE_MOVES + 1):
                    if counts[i] + up > rows[i] or counts[j] - down < 0:
                        continue
                    gap = abs(total + up * step[i] - down * step[j] - target)
                    if gap < best[0]:
                        best = (gap, i, up, j, down)
    _, i, up, j, down = best
    counts = list(counts)
    counts[i] += up
    counts[j] -= down
    return counts, total + up * step[i] - down * step[j] - target
