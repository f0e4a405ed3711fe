"""A k-quant-like super-block quantizer in the style of GGUF Q4_K / Q3_K (llama.cpp ``ggml-quants.c``).

Each row is cut into super-blocks of 256 weights (zero-padded at the end of a row), each split into
sub-blocks whose scales (and mins) are themselves quantized to 6 bits against fp16 super-block constants:

* Q4_K: 8 sub-blocks of 32; ``ŵ = d·sc_j·q − dmin·m_j``, ``q ∈ 0..15``, ``sc_j, m_j ∈ 0..63``; a sub-block's
  scale and min come from its range ``[min(w, 0), max w]``, and ``d = max_j scale_j / 63``,
  ``dmin = max_j min_j / 63`` (stored as fp16).
* Q3_K: 16 sub-blocks of 16; ``ŵ = d·sc_j·q``, ``q ∈ −4..3``, ``sc_j ∈ −32..31``. Both levels use
  llama.cpp's signed-extreme rule: the scale's sign makes the value of largest magnitude land on the
  long end of the two's-complement range (−4, resp. −32), so all 2^b codes are used.

Unlike llama.cpp, sub-block scales come from min-max / absmax directly, without its iterative
error-weighted refinement (``make_qkx2_quants``, ``make_q3_quants``): "k-quant-like".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from measure.compress.methods.params import BitsFunction
from measure.compress.methods.uniform import grouped
from theory.accounting import Convention, kquant_bits_per_weight

SUPER_BLOCK = 256
SCALE_BITS = 6


@dataclass(frozen=True)
class KQuantLayout:
    """Sub-block size, weight bits and whether sub-blocks carry a min (asymmetric) of one GGUF type."""

    gguf_type: str
    sub_block: int
    bits: int
    with_min: bool


LAYOUTS = {
    "q4_k": KQuantLayout("Q4_K", sub_block=32, bits=4, with_min=True),
    "q3_k": KQuantLayout("Q3_K", sub_block=16, bits=3, with_min=False),
}


def kquant_quantize(weight: torch.Tensor, gram: torch.Tensor | None = None, *, layout: str) -> torch.Tensor:
    """Quantize ``weight`` in GGUF-style super-blocks of 256 (``layout`` ``"q4_k"`` or ``"q3_k"``)."""
    spec = LAYOUTS[layout]
    groups, restore = grouped(weight, SUPER_BLOCK)
    sub_blocks = groups.reshape(*groups.shape[:2], SUPER_BLOCK // spec.sub_block, spec.sub_block)
    rounded = _with_min(sub_blocks, spec.bits) if spec.with_min else _signed(sub_blocks, spec.bits)
    return restore(rounded.reshape(groups.shape))


def kquant_bits_per_weight_padded(layout: str) -> BitsFunction:
    """GGUF bits per weight (``accounting.kquant_bits_per_weight``) times the row padding ``⌈in/256⌉·256/in``."""

    def bits(params: dict, shape: tuple[int, int], convention: Convention) -> float:
        padded = -(-shape[1] // SUPER_BLOCK) * SUPER_BLOCK
        return kquant_bits_per_weight(LAYOUTS[layout].gguf_type) * padded / shape[1]

    return bits


def _with_min(sub_blocks: torch.Tensor, bits: int) -> torch.Tensor:
    """Q4_K-style ``ŵ = S_j·q − M_j`` with 6-bit quantized sub-block scales S_j and mins M_j."""
    levels = 2**bits - 1
    mins = -sub_blocks.amin(dim=-1, keepdim=True).clamp_max(0)
    scales = (sub_blocks.amax(dim=-1, keepdim=True) + mins) / levels
    scales, mins = _unsigned_6bit(scales), _unsigned_6bit(mins)
    codes = torch.clamp(torch.round((sub_blocks + mins) / torch.where(scales > 0, scales, 1.0)), 0, levels)
    return scales * codes - mins


def _signed(sub_blocks: torch.Tensor, bits: int) -> torch.Tensor:
    """Q3_K-style ``ŵ = S_j·q`` with signed-extreme scales, themselves 6-bit signed-extreme against fp16 d."""
    scales = _signed_extreme_scale(sub_blocks, bits)
    super_scale = _fp16(_signed_extreme_scale(scales.squeeze(-1), SCALE_BITS)).unsqueeze(-1)
    scales = super_scale * _signed_codes(scales, super_scale, SCALE_BITS)
    return scales * _signed_codes(sub_blocks, scales, bits)


def _signed_extreme_scale(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Scale ``−x_ext / 2^(b−1)`` per last-dimension group, x_ext its element of largest magnitude."""
    extreme = values.gather(-1, values.abs().argmax(dim=-1, keepdim=True))
    return -extreme / 2 ** (bits - 1)


def _signed_codes(values: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """``clamp(round(x / s), −2^(b−1), 2^(b−1) − 1)`` (0 where s = 0)."""
    half = 2 ** (bits - 1)
    return torch.clamp(torch.round(values / torch.where(scale != 0, scale, 1.0)), -half, half - 1)


def _unsigned_6bit(values: torch.Tensor) -> torch.Tensor:
    """Non-negative sub-block values rounded to ``D·c``, ``c ∈ 0..63``, ``D = fp16(max / 63)`` per super-block."""
    levels = 2**SCALE_BITS - 1
    step = _fp16(values.amax(dim=-2, keepdim=True) / levels)
    return step * torch.clamp(torch.round(values / torch.where(step > 0, step, 1.0)), 0, levels)


def _fp16(values: torch.Tensor) -> torch.Tensor:
    """Round to the nearest IEEE half-precision value (the storage type of super-block constants)."""
    return values.to(torch.float16).to(values.dtype)
