"""Errors of a compressed weight: output error through the Gram matrix and weight-domain SQNR.

With ``Y = X Wᵀ`` the layer output on calibration inputs X (tokens × in) and H = XᵀX,
``‖X ΔWᵀ‖²_F = tr(ΔW H ΔWᵀ)``, so the relative output error is
``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`` — the layer-wise objective of OBS/GPTQ (Frantar et al. 2022,
arXiv 2210.17323, Eq. 1) and the per-layer SQNR of Kuzmin et al. (2023, Sec. 4).
"""

from __future__ import annotations

import torch

from theory.errors import PvqError
from theory.sqnr import relative_error_db


class LayerErrorMeter:
    """Relative output errors of replacements Ŵ of one weight W on inputs with Gram H, float64.

    e(Ŵ) = tr(ΔW H ΔWᵀ) / tr(W H Wᵀ) with ΔW = Ŵ − W; the denominator is computed once per layer, so each
    replacement costs one (out × in)·(in × in) product.
    """

    def __init__(self, weight: torch.Tensor, gram: torch.Tensor) -> None:
        self.weight = weight.detach().double()
        self.gram = gram.detach().double()
        self.signal = quadratic_trace(self.weight, self.gram)
        if not self.signal > 0:
            raise PvqError("the layer output W·X is zero on the calibration data; the relative error is undefined")

    def relative_error(self, weight_hat: torch.Tensor) -> float:
        """tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)."""
        return max(quadratic_trace(weight_hat.detach().double() - self.weight, self.gram), 0.0) / self.signal


def quadratic_trace(matrix: torch.Tensor, gram: torch.Tensor) -> float:
    """tr(M H Mᵀ) = Σ_ij (M H)_ij M_ij."""
    return float(((matrix @ gram) * matrix).sum())


def output_error(weight: torch.Tensor, weight_hat: torch.Tensor, gram: torch.Tensor) -> tuple[float, float]:
    """``(relative_error, sqnr_db)``: ``e = tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)``, ``SQNR = −10·log10 e`` dB, float64.

    An exact reconstruction gives ``(0.0, inf)``.
    """
    _check_pair(weight, weight_hat)
    if gram.shape != (weight.shape[1], weight.shape[1]):
        raise PvqError(f"the Gram matrix must be {weight.shape[1]}×{weight.shape[1]}, got {tuple(gram.shape)}")
    relative = LayerErrorMeter(weight, gram).relative_error(weight_hat)
    return relative, relative_error_db(relative)


def weight_sqnr_db(weight: torch.Tensor, weight_hat: torch.Tensor) -> float:
    """Weight-domain SQNR ``10·log10(‖W‖²_F / ‖W − Ŵ‖²_F)`` in dB, float64 (inf when Ŵ = W)."""
    _check_pair(weight, weight_hat)
    w = weight.double()
    signal = float((w * w).sum())
    if not signal > 0:
        raise PvqError("the weight is all zeros; its SQNR is undefined")
    return relative_error_db(float(((weight_hat.double() - w) ** 2).sum()) / signal)


def _check_pair(weight: torch.Tensor, weight_hat: torch.Tensor) -> None:
    if weight.shape != weight_hat.shape:
        raise PvqError(
            f"the compressed weight has shape {tuple(weight_hat.shape)}, expected {tuple(weight.shape)}"
        )
