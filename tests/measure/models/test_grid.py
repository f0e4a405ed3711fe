"""Grid detection finds block-quantized weights and never flags float weights."""

from __future__ import annotations

import torch

from measure.models.weight_grid import detect_model_grid, detect_tensor_grid


def _block_quantize(weight: torch.Tensor, bits: int, block: int) -> torch.Tensor:
    """Asymmetric min/max quantization per block of ``block`` inputs (GGUF Q4_1 style)."""
    rows, cols = weight.shape
    blocks = weight.reshape(rows, cols // block, block)
    low, high = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)
    step = (high - low) / (2**bits - 1)
    return (torch.round((blocks - low) / step) * step + low).reshape(rows, cols)


def test_detects_bits_and_block_size() -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(48, 512, generator=generator)
    q4 = detect_tensor_grid("q4", _block_quantize(weight, 4, 32))
    assert (q4.on_grid, q4.bits, q4.block_size) == (True, 4, 32)
    q3 = detect_tensor_grid("q3", _block_quantize(weight, 3, 64))
    assert q3.on_grid and q3.bits == 3 and q3.block_size in (32, 64)


def test_float_weights_are_not_on_a_grid() -> None:
    weight = torch.randn(64, 1024, generator=torch.Generator().manual_seed(1))
    assert not detect_tensor_grid("float", weight).on_grid
    report = detect_model_grid([("a", weight), ("b", _block_quantize(weight, 4, 32))])
    assert report.tensors == 2 and report.on_grid == 1 and report.bits == [4]
