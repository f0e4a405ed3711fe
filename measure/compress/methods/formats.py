"""Weight quantizers on the number formats of :mod:`theory.formats`: NF4, OCP MX block formats, ternary.

The element grids and rounding belong to :mod:`theory.formats` (numpy); these wrappers apply them to a
torch weight along its input dimension and add what the storage format does to the scales.
"""

from __future__ import annotations

import torch

from measure.compress.methods.params import BitsFunction
from measure.compress.methods.uniform import IntegerGrid, grouped
from theory import formats
from theory.accounting import Convention, mx_bits_per_weight, nf4_bits_per_weight, ternary_bits_per_weight

DOUBLE_QUANT_BLOCK = 256
DOUBLE_QUANT_GRID = IntegerGrid(bits=8, kind="signed")


def nf4_quantize(
    weight: torch.Tensor, gram: torch.Tensor | None = None, *, block_size: int, double_quant: bool
) -> torch.Tensor:
    """QLoRA NF4 (Dettmers et al. 2023, arXiv 2305.14314, Sec. 3): ``ŵ = c·NF4(w / c)``, c = absmax per block.

    Blocks of ``block_size`` consecutive input columns. With ``double_quant`` the absmax constants c are
    themselves stored in 8 bits (QLoRA "Double Quantization"): centred on their mean, then symmetric
    8-bit with one fp32 scale per 256 constants. (bitsandbytes uses its dynamic 8-bit float map for that
    second level; the absmax ``"signed"`` 8-bit grid of :mod:`measure.compress.methods.uniform`,
    ``s = max|c|/127``, is used here — same storage, slightly different rounding.)
    """
    blocks, restore = grouped(weight, block_size)
    absmax = blocks.abs().amax(dim=-1, keepdim=True)
    if double_quant:
        absmax = _double_quantized(absmax)
    safe = torch.where(absmax > 0, absmax, 1.0)
    levels = formats.round_to_values((blocks / safe).numpy(), formats.nf4_values())
    return restore(torch.from_numpy(levels).to(weight.dtype) * absmax)


def _double_quantized(absmax: torch.Tensor) -> torch.Tensor:
    """Absmax constants after centring on their mean and 8-bit symmetric rounding in blocks of 256."""
    flat = absmax.reshape(1, -1)
    offset = flat.mean()
    groups, restore = grouped(flat - offset, DOUBLE_QUANT_BLOCK)
    scale, zero = DOUBLE_QUANT_GRID.fit(groups)
    return (restore(DOUBLE_QUANT_GRID.round(groups, scale, zero)) + offset).clamp_min(0).reshape(absmax.shape)


def nf4_bits(params: dict, shape: tuple[int, int], convention: Convention) -> float:
    """``4 + 32/B`` or, double-quantized, ``4 + 8/B + 32/(256·B)`` (QLoRA, Sec. 3)."""
    return nf4_bits_per_weight(params["block_size"], params["double_quant"])


def mx_quantize(weight: torch.Tensor, gram: torch.Tensor | None = None, *, element: str) -> torch.Tensor:
    """OCP MX v1.0 block format: 32 consecutive input columns share one E8M0 power-of-two scale (§6.3)."""
    quantized = formats.mx_quantize(weight.numpy(), element, block_size=32, axis=-1)
    return torch.from_numpy(quantized).to(weight.dtype)


def mx_element_bits(element: str) -> int:
    """Bits of one MX element (8 for INT8/FP8, 6 for FP6, 4 for FP4)."""
    return formats.mx_element(element).bits


def mx_bits(element: str) -> BitsFunction:
    """Bits-per-weight function of an MX format: element bits + 8/32 (E8M0 scale per block of 32)."""

    def bits(params: dict, shape: tuple[int, int], convention: Convention) -> float:
        return mx_bits_per_weight(mx_element_bits(element))

    return bits


def ternary_quantize(weight: torch.Tensor, gram: torch.Tensor | None = None, *, packing: str) -> torch.Tensor:
    """BitNet b1.58 (Ma et al. 2024, arXiv 2402.17764, Eq. 1–3): ``γ·clip(round(W/γ), −1, 1)``, ``γ = mean|W|``.

    ``packing`` only changes the storage cost.
    """
    return torch.from_numpy(formats.ternary_quantize(weight.numpy())).to(weight.dtype)


def ternary_bits(params: dict, shape: tuple[int, int], convention: Convention) -> float:
    """``log2 3`` (ideal) or 2 bits per weight, plus one fp16 γ per tensor."""
    return ternary_bits_per_weight(params["packing"], shape[0] * shape[1])
