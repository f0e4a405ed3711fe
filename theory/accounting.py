"""Equal-compression accounting: bits per weight of every format, overheads included.

The baseline is a 16-bit dense weight. Quantized formats pay for their scales and zero-points per
group; pruned weights pay for the kept values plus the mask encoding. Kuzmin et al. (2023, Sec. 3)
compare INT-b with pruning at sparsity 1 - b/16, i.e. a free mask: that is the ``"none"`` encoding
here, and every result records which convention it used (:class:`Convention`).

Formulas (bits per weight, bpw):

* integer grid, group size g, s-bit scale and z-bit zero point: ``b + (s + z) / g``
* NF4 (Dettmers et al., QLoRA 2023), block 64 with fp32 absmax: ``4 + 32/64``; with double
  quantization (8-bit absmax, one fp32 constant per 256 blocks): ``4 + 8/64 + 32/(64*256)``
* OCP MX v1.0 block formats: ``element_bits + 8/32`` (shared E8M0 scale per 32 elements)
* GGUF k-quants: super-blocks of 256 weights with quantized sub-block scales (llama.cpp
  ``ggml-quants``): Q2_K 2.625, Q3_K 3.4375, Q4_K 4.5, Q5_K 5.5, Q6_K 6.5625 bpw; ternary TQ1_0
  1.6875 and TQ2_0 2.0625 bpw
* ternary {-1, 0, 1}·s (BitNet b1.58): ``log2(3)`` per weight (entropy-ideal packing) or 2 bits
  (``packing="2bit"``), plus one 16-bit scale per tensor
* pruning at sparsity p, kept values at ``base_bits``:
  ``none``: ``(1-p)·base``; ``bitmask``: ``(1-p)·base + 1``;
  ``index``: ``(1-p)·(base + index_bits)``; ``nm`` (N:M): ``(N/M)·base + N·ceil(log2 M)/M``;
  ``entropy`` (the mask entropy-coded at its Shannon limit, a Bernoulli(p) source):
  ``(1-p)·base + H(p)``, ``H(p) = −p·log2 p − (1−p)·log2(1−p)`` (0.84 bits at p = 4/15).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any

from theory.errors import PvqError, choose

BASE_BITS = 16
MASK_ENCODINGS = ("none", "bitmask", "index", "nm", "entropy")

KQUANT_BITS_PER_WEIGHT: dict[str, float] = {
    # (256·b + sub-block scale/min bits + super-block fp16 constants) / 256
    "Q2_K": (256 * 2 + 16 * 8 + 2 * 16) / 256,
    "Q3_K": (256 * 3 + 16 * 6 + 16) / 256,
    "Q4_K": (256 * 4 + 8 * 12 + 2 * 16) / 256,
    "Q5_K": (256 * 5 + 8 * 12 + 2 * 16) / 256,
    "Q6_K": (256 * 6 + 16 * 8 + 16) / 256,
    # legacy 32-weight blocks: fp16 scale (and fp16 min for the _1 variants)
    "Q4_0": 4 + 16 / 32,
    "Q4_1": 4 + 32 / 32,
    "Q5_0": 5 + 16 / 32,
    "Q5_1": 5 + 32 / 32,
    "Q8_0": 8 + 16 / 32,
    # ternary: TQ1_0 packs 5 trits per byte (240 weights) + 4 trits per byte (16) + fp16 scale;
    # TQ2_0 stores 2 bits per weight + fp16 scale
    "TQ1_0": (48 * 8 + 4 * 8 + 16) / 256,
    "TQ2_0": (256 * 2 + 16) / 256,
}


@dataclass(frozen=True)
class Convention:
    """How pruning is charged for its mask; recorded with every equal-compression result."""

    mask_encoding: str = "none"
    base_bits: float = BASE_BITS
    index_bits: int = 16
    n: int = 2
    m: int = 4

    def __post_init__(self) -> None:
        choose("mask encoding", self.mask_encoding, MASK_ENCODINGS)
        if self.base_bits <= 0 or self.index_bits <= 0:
            raise PvqError("base_bits and index_bits must be positive")
        if not 0 < self.n <= self.m:
            raise PvqError(f"N:M needs 0 < N <= M, got {self.n}:{self.m}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


PAPER_CONVENTION = Convention()  # Kuzmin et al.: free mask, INT-b <-> sparsity 1 - b/16


def integer_bits_per_weight(
    bits: int, group_size: float | None, scale_bits: int = 16, zero_point_bits: int = 0
) -> float:
    """``b + (s + z)/g`` for a b-bit integer grid with one scale (and zero point) per group of g.

    ``group_size=None`` means the overhead is negligible (one scale per tensor).
    """
    if bits < 1:
        raise PvqError(f"bits must be >= 1, got {bits}")
    if group_size is None:
        return float(bits)
    if group_size < 1:
        raise PvqError(f"group size must be >= 1, got {group_size}")
    return bits + (scale_bits + zero_point_bits) / group_size


def nf4_bits_per_weight(block_size: int = 64, double_quant: bool = True) -> float:
    """NF4 storage cost (QLoRA): 4 bits + absmax per block, optionally double-quantized."""
    if not double_quant:
        return 4 + 32 / block_size
    return 4 + 8 / block_size + 32 / (block_size * 256)


def mx_bits_per_weight(element_bits: int, block_size: int = 32, scale_bits: int = 8) -> float:
    """OCP MX v1.0: element bits + one shared 8-bit power-of-two scale per 32-element block."""
    return element_bits + scale_bits / block_size


def kquant_bits_per_weight(name: str) -> float:
    """Bits per weight of a GGUF quantization type (llama.cpp block layouts)."""
    key = name.upper()
    return KQUANT_BITS_PER_WEIGHT[choose("GGUF type", key, KQUANT_BITS_PER_WEIGHT)]


def ternary_bits_per_weight(packing: str = "ideal", numel: int | None = None) -> float:
    """BitNet b1.58 ternary weights: log2(3) (ideal) or 2 (two-bit packing) + one fp16 scale."""
    per_weight = {"ideal": math.log2(3), "2bit": 2.0}
    if packing not in per_weight:
        raise PvqError(f"unknown ternary packing {packing!r}; choose 'ideal' or '2bit'")
    return per_weight[packing] + (16 / numel if numel else 0.0)


def sparse_bits_per_weight(sparsity: float, convention: Convention = PAPER_CONVENTION) -> float:
    """Bits per weight of a pruned tensor: kept values at ``base_bits`` plus the mask encoding."""
    check_sparsity(sparsity)
    density = 1.0 - sparsity
    base = convention.base_bits
    if convention.mask_encoding == "none":
        return density * base
    if convention.mask_encoding == "bitmask":
        return density * base + 1.0
    if convention.mask_encoding == "index":
        return density * (base + convention.index_bits)
    if convention.mask_encoding == "entropy":
        return density * base + binary_entropy_bits(sparsity)
    n, m = convention.n, convention.m
    if not math.isclose(sparsity, 1 - n / m):
        raise PvqError(f"N:M {n}:{m} fixes the sparsity at {1 - n / m:g}, got {sparsity:g}")
    return (n / m) * base + n * math.ceil(math.log2(m)) / m


def equal_compression_sparsity(bits_per_weight: float, convention: Convention = PAPER_CONVENTION) -> float:
    """The sparsity whose pruned size equals ``bits_per_weight`` under ``convention``.

    The inverse of :func:`sparse_bits_per_weight`; e.g. INT4 (4 bpw) ↔ 75 % sparsity with the
    paper's ``none`` convention, ↔ 81.25 % with a 1-bit bitmask.
    """
    base = convention.base_bits
    if convention.mask_encoding == "none":
        sparsity = 1 - bits_per_weight / base
    elif convention.mask_encoding == "bitmask":
        sparsity = 1 - (bits_per_weight - 1) / base
    elif convention.mask_encoding == "index":
        sparsity = 1 - bits_per_weight / (base + convention.index_bits)
    elif convention.mask_encoding == "entropy":
        sparsity = _entropy_coded_sparsity(bits_per_weight, base)
    else:
        raise PvqError("N:M fixes the sparsity at 1 - N/M; choose mask encoding none, bitmask or index")
    if not 0 <= sparsity < 1:  # NaN fails too
        raise PvqError(
            f"{bits_per_weight:g} bits per weight has no pruning equivalent under the "
            f"{convention.mask_encoding!r} encoding (sparsity would be {sparsity:g})"
        )
    return sparsity


def binary_entropy_bits(p: float) -> float:
    """H(p) = −p·log2 p − (1−p)·log2(1−p) in bits (0 at p = 0 and p = 1)."""
    return -sum(q * math.log2(q) for q in (p, 1.0 - p) if q > 0)


def _entropy_coded_sparsity(bits_per_weight: float, base: float) -> float:
    """The sparsity p ≥ p* with (1−p)·base + H(p) = ``bits_per_weight``, by bisection to machine precision.

    The size falls monotonically on p ≥ p* = 1/(1 + 2^base), where d/dp [(1−p)·base + H(p)] =
    −base + log2((1−p)/p) vanishes; a size above the maximum (≈ base) or below 0 has no solution (NaN)."""
    def size(p: float) -> float:
        return (1 - p) * base + binary_entropy_bits(p)

    low, high = 1.0 / (1.0 + 2.0**base), 1.0
    if not 0 <= bits_per_weight <= size(low):
        return math.nan
    for _ in range(200):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if size(middle) > bits_per_weight else (low, middle)
    return 0.5 * (low + high)


def removal_bits_per_weight(removed_fraction: float, base_bits: int = BASE_BITS) -> float:
    """Average bits per (original) weight after removing a fraction f of the weights entirely.

    Removing blocks that hold a fraction f of the decoder parameters keeps ``(1-f)·base`` bits per
    original weight: structurally the same accounting as unstructured pruning with a free mask.
    """
    check_sparsity(removed_fraction, what="removed fraction")
    return (1 - removed_fraction) * base_bits


def check_sparsity(sparsity: float, what: str = "sparsity") -> None:
    """Raise a clear error unless ``0 <= sparsity < 1`` (a real number, NaN and booleans refused)."""
    if isinstance(sparsity, bool) or not (isinstance(sparsity, numbers.Real) and 0 <= sparsity < 1):
        raise PvqError(f"{what} must lie in [0, 1), got {sparsity!r}")


def check_bits(bits: int, low: int = 2, high: int = 8) -> None:
    """Raise a clear error unless ``bits`` is an integer in ``[low, high]`` (numpy integers accepted)."""
    if isinstance(bits, bool) or not (isinstance(bits, numbers.Integral) and low <= bits <= high):
        raise PvqError(f"bits must be an integer in {low}..{high} for integer grids, got {bits!r}")
