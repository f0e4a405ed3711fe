"""Number formats as pure numpy: representable values, nearest rounding, MX / NF4 block quantizers, ternary.

Everything here takes arbitrary-shape float arrays and returns an array of the same shape and float
dtype (float32 stays float32), so `measure/` applies the same functions to real weight matrices.

Sources:
* OCP Microscaling Formats (MX) v1.0 (2023): element formats FP8 E4M3/E5M2, FP6 E3M2/E2M3, FP4 E2M1,
  INT8, and the shared E8M0 scale ``X = 2^(floor(log2 max|V|) - emax_elem)`` per 32-element block (§6.3),
  elements converted with round-to-nearest-even and saturated to the largest normal.
* QLoRA (Dettmers et al., 2023), NF4: the 16 levels built from normal quantiles, blockwise absmax (64).
* BitNet b1.58 (Ma et al., 2024): ternary ``RoundClip(W/γ, -1, 1)·γ`` with the absmean ``γ = mean|W|``.
* Kuzmin et al. (2023), Sec. 2: the signed integer grid ``{-2^(b-1), …, 2^(b-1)-1}``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from scipy import special

from theory import accounting
from theory.errors import PvqError, choose

# OCP MX v1.0 Table 1: E5M2 keeps IEEE infinities/NaNs (top exponent reserved); E4M3 reserves only
# S.1111.111 for NaN; the FP6 and FP4 formats have no special values.
OCP_RESERVED = {(5, 2): "ieee", (4, 3): "top-code-nan"}

NF4_OFFSET = 0.9677083  # QLoRA: the outermost quantile level, (1 - 1/(2·15) + 1 - 1/(2·16)) / 2


def fp_values(exponent_bits: int, mantissa_bits: int) -> np.ndarray:
    """All finite values of a sign/exponent/mantissa format with bias ``2^(e-1) - 1``, sorted, one zero.

    Normal: ``(1 + m/2^M)·2^(E - bias)`` for E >= 1; subnormal: ``(m/2^M)·2^(1 - bias)`` (OCP MX v1.0,
    Sec. 5.3). Reserved codes per OCP: E4M3 max 448, E5M2 max 57344, E3M2 28, E2M3 7.5, E2M1 6.
    """
    if exponent_bits < 1 or mantissa_bits < 0 or exponent_bits + mantissa_bits > 10:
        raise PvqError(f"unsupported float format E{exponent_bits}M{mantissa_bits}")
    bias = 2 ** (exponent_bits - 1) - 1
    steps = 2**mantissa_bits
    exponent = np.arange(2**exponent_bits)[:, None]
    mantissa = np.arange(steps)[None, :]
    normal = (1.0 + mantissa / steps) * 2.0 ** (exponent - bias)
    subnormal = (mantissa / steps) * 2.0 ** (1 - bias)
    magnitudes = np.where(exponent == 0, subnormal, normal)
    reserved = OCP_RESERVED.get((exponent_bits, mantissa_bits))
    if reserved == "ieee":
        magnitudes = magnitudes[:-1]
    magnitudes = magnitudes.ravel()
    if reserved == "top-code-nan":
        magnitudes = magnitudes[:-1]
    return np.concatenate([-magnitudes[:0:-1], magnitudes])


def nf4_values() -> np.ndarray:
    """The 16 NF4 levels in [-1, 1] (QLoRA, Sec. 3): 8 positive and 7 negative normal quantiles, plus 0.

    ``Φ⁻¹`` at 9 equal steps from ``NF4_OFFSET`` to ½ (positive side, ½ dropped) and at 8 steps
    (negative side), normalized by the largest; they match the published bitsandbytes table to 1e-7.
    """
    positive = special.ndtri(np.linspace(NF4_OFFSET, 0.5, 9)[:-1])
    negative = -special.ndtri(np.linspace(NF4_OFFSET, 0.5, 8)[:-1])
    levels = np.sort(np.concatenate([positive, [0.0], negative]))
    return levels / levels.max()


def int_grid(bits: int, symmetric: bool = True) -> np.ndarray:
    """Integer codes: signed ``{-2^(b-1), …, 2^(b-1)-1}`` (Kuzmin et al., Sec. 2) or unsigned ``{0, …, 2^b-1}``.

    The unsigned codes are used with a zero point z: value ``(q - z)·s``; b = 2..16. The theory's INT-b
    grid is the signed one with an MSE-searched clipping range (:func:`theory.sqnr.fit_integer_grid`), which
    reaches every code; the measured methods' grids are in :mod:`measure.compress.methods.uniform`.
    """
    accounting.check_bits(bits, high=16)
    if symmetric:
        return np.arange(-(2 ** (bits - 1)), 2 ** (bits - 1), dtype=float)
    return np.arange(0, 2**bits, dtype=float)


def round_to_values(x: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Nearest element of the sorted set ``values`` for each entry of ``x``, saturating at both ends.

    An exact midpoint goes to the neighbour an even number of steps away from the value 0 (or from
    the first value if 0 is absent): round-half-to-even on integer codes, as ``torch.round``, and
    roundTiesToEven on the codes of a float format, as the OCP spec asks.
    """
    x = np.asarray(x)
    out_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    levels = np.asarray(values, dtype=np.float64)
    if levels.ndim != 1 or levels.size == 0 or np.any(np.diff(levels) <= 0):
        raise PvqError("values must be a non-empty, strictly increasing 1-D array")
    if levels.size == 1:
        return np.full(x.shape, levels[0], dtype=out_dtype)
    wide = x.astype(np.float64, copy=False)
    midpoints = 0.5 * (levels[1:] + levels[:-1])
    index = np.searchsorted(midpoints, wide, side="left")
    zero_index = int(np.searchsorted(levels, 0.0)) if 0.0 in levels else 0
    inside = np.minimum(index, midpoints.size - 1)
    tie = (wide == midpoints[inside]) & ((index - zero_index) % 2 == 1)
    return levels[index + tie].astype(out_dtype, copy=False)


def _blockwise(x: np.ndarray, block_size: int, axis: int, quantize_blocks: Callable[[np.ndarray], np.ndarray]
               ) -> np.ndarray:
    """Apply ``quantize_blocks`` to ``(..., n_blocks, block_size)`` views along ``axis`` (zero-padded tail)."""
    if block_size < 1:
        raise PvqError(f"block size must be >= 1, got {block_size}")
    x = np.asarray(x)
    moved = np.moveaxis(x, axis, -1)
    length = moved.shape[-1]
    pad = (-length) % block_size
    padded = np.pad(moved, [(0, 0)] * (moved.ndim - 1) + [(0, pad)]) if pad else moved
    blocks = padded.reshape(*padded.shape[:-1], -1, block_size).astype(np.float64, copy=False)
    result = quantize_blocks(blocks).reshape(padded.shape)[..., :length]
    out_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    return np.moveaxis(result, -1, axis).astype(out_dtype, copy=False)


@dataclass(frozen=True, eq=False)
class MxElement:
    """An OCP MX element format: its finite values and ``emax_elem``, the exponent of its largest normal."""

    name: str
    bits: int
    values: np.ndarray

    @property
    def emax(self) -> int:
        return int(np.floor(np.log2(self.values.max())))


MX_ELEMENTS: dict[str, MxElement] = {
    "int8": MxElement("int8", 8, np.arange(-128, 128) / 64.0),  # two's complement, implicit scale 2^-6
    "fp8_e4m3": MxElement("fp8_e4m3", 8, fp_values(4, 3)),
    "fp8_e5m2": MxElement("fp8_e5m2", 8, fp_values(5, 2)),
    "fp6_e3m2": MxElement("fp6_e3m2", 6, fp_values(3, 2)),
    "fp6_e2m3": MxElement("fp6_e2m3", 6, fp_values(2, 3)),
    "fp4_e2m1": MxElement("fp4_e2m1", 4, fp_values(2, 1)),
}
E8M0_EXPONENT_RANGE = (-127, 127)


def mx_element(element: str) -> MxElement:
    """The MX element format called ``element``."""
    choose("MX element", element, MX_ELEMENTS)
    return MX_ELEMENTS[element]


def _mx_blocks(blocks: np.ndarray, element: MxElement) -> np.ndarray:
    amax = np.abs(blocks).max(axis=-1, keepdims=True)
    _, exponent = np.frexp(amax)  # amax = m·2^e with m in [0.5, 1): floor(log2 amax) = e - 1
    shared = np.clip(exponent - 1 - element.emax, *E8M0_EXPONENT_RANGE)
    shared = np.where(amax > 0, shared, 0)
    scale = np.ldexp(1.0, shared)
    return round_to_values(blocks / scale, element.values) * scale


def mx_quantize(x: np.ndarray, element: str, block_size: int = 32, axis: int = -1) -> np.ndarray:
    """OCP MX v1.0 quantize-dequantize along ``axis``: per block ``X = 2^(floor(log2 max|V|) - emax_elem)``,
    ``P_i = round(V_i / X)`` to the element format (ties to even, saturating), result ``X·P_i`` (§6.3).
    """
    spec = mx_element(element)
    return _blockwise(x, block_size, axis, partial(_mx_blocks, element=spec))


def _absmax_blocks(blocks: np.ndarray, levels: np.ndarray) -> np.ndarray:
    absmax = np.abs(blocks).max(axis=-1, keepdims=True)
    safe = np.where(absmax > 0, absmax, 1.0)
    return round_to_values(blocks / safe, levels) * safe


def nf4_quantize(x: np.ndarray, block_size: int = 64, axis: int = -1) -> np.ndarray:
    """QLoRA NF4 quantize-dequantize: per block, ``absmax · NF4(V / absmax)`` (fp32 absmax, Sec. 3)."""
    return _blockwise(x, block_size, axis, partial(_absmax_blocks, levels=nf4_values()))


TERNARY_LEVELS = np.array([-1.0, 0.0, 1.0])


def ternary_quantize(x: np.ndarray) -> np.ndarray:
    """BitNet b1.58 absmean ternary: ``γ·RoundClip(W/γ, -1, 1)`` with ``γ = mean|W|`` over the tensor (Eq. 1-3)."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    gamma = float(np.mean(np.abs(x), dtype=np.float64))
    if gamma == 0:
        return np.zeros_like(x)
    return round_to_values(x / gamma, TERNARY_LEVELS) * np.asarray(gamma, dtype=x.dtype)


# Format registry -------------------------------------------------------------------------------------

GRID_SCALINGS = ("mse-clip", "absmean")


@dataclass(frozen=True, eq=False)
class Format:
    """A named weight format: how its values are scaled, what it stores per weight, how it quantizes.

    ``scaling``: ``"mse-clip"`` (one per-tensor scale chosen to minimize the MSE; analytic SQNR),
    ``"absmean"`` (ternary; analytic), ``"block"`` (per-block scales; Monte Carlo SQNR over blocks).
    ``unit_levels`` are the representable values before scaling (grid formats); ``block_quantize``
    quantizes an array along its last axis (block formats).
    """

    name: str
    family: str
    element_bits: float
    bits_per_weight: float
    scaling: str
    description: str
    unit_levels: np.ndarray | None = None
    block_quantize: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False)
    block_size: int | None = None
    symmetric_grid: bool = True

    @property
    def analytic(self) -> bool:
        return self.scaling in GRID_SCALINGS


def _build_formats() -> dict[str, Format]:
    formats: dict[str, Format] = {}
    for bits in range(2, 9):
        formats[f"int{bits}"] = Format(
            f"int{bits}", "int", bits, accounting.integer_bits_per_weight(bits, None), "mse-clip",
            f"signed grid {{-{2 ** (bits - 1)}..{2 ** (bits - 1) - 1}}}·s, per-tensor MSE-optimal s",
            unit_levels=int_grid(bits, symmetric=True),
        )
        formats[f"int{bits}_asym"] = Format(
            f"int{bits}_asym", "int-asym", bits, accounting.integer_bits_per_weight(bits, None), "mse-clip",
            f"unsigned grid (q - z)·s, q in 0..{2**bits - 1}, integer zero point z, per-tensor MSE-optimal s, z",
            unit_levels=int_grid(bits, symmetric=False), symmetric_grid=False,
        )
    for name, (e, m) in {"fp8_e4m3": (4, 3), "fp8_e5m2": (5, 2), "fp6_e3m2": (3, 2), "fp6_e2m3": (2, 3),
                         "fp4_e2m1": (2, 1)}.items():
        formats[name] = Format(
            name, "fp", 1 + e + m, accounting.integer_bits_per_weight(1 + e + m, None), "mse-clip",
            f"OCP E{e}M{m} values times one per-tensor MSE-optimal scale", unit_levels=fp_values(e, m),
        )
    formats["nf4"] = Format(
        "nf4", "nf4", 4, accounting.nf4_bits_per_weight(64, double_quant=True), "block",
        "QLoRA NF4, absmax per 64-block (storage counts double-quantized absmax)",
        block_quantize=nf4_quantize, block_size=64,
    )
    for element, spec in MX_ELEMENTS.items():
        name = {"int8": "mxint8", "fp4_e2m1": "mxfp4"}.get(element, f"mx{element}")
        formats[name] = Format(
            name, "mx", spec.bits, accounting.mx_bits_per_weight(spec.bits), "block",
            f"OCP MX v1.0 {element} elements, shared E8M0 scale per 32",
            block_quantize=partial(mx_quantize, element=element), block_size=32,
        )
    formats["ternary"] = Format(
        "ternary", "ternary", math.log2(3), accounting.ternary_bits_per_weight("ideal"), "absmean",
        "BitNet b1.58 {-1, 0, 1}·mean|W|, log2(3) bits (ideal packing)", unit_levels=TERNARY_LEVELS,
    )
    return formats


FORMATS: dict[str, Format] = _build_formats()


def get_format(name: str) -> Format:
    """The registered format called ``name``."""
    choose("format", name, FORMATS)
    return FORMATS[name]
