"""Errors of a compressed weight: output error through the Gram matrix and weight-domain SQNR.

With ``Y = X Wᵀ`` the layer output on calibration inputs X (tokens × in) and H = XᵀX,
``‖X ΔWᵀ‖²_F = tr(ΔW H ΔWᵀ)``, so the relative output error is
``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`` — the layer-wise objective of OBS/GPTQ (Frantar et al. 2022,
arXiv 2210.17323, Eq. 1) and the per-layer SQNR of Kuzmin et al. (2023, Sec. 4).
"""

from __future__ import annotations

import math

import torch

from theory.errors import PvqError


def output_error(
    weight: torch.Tensor, weight_hat: torch.Tensor, gram: torch.Tensor, signal: float | None = None
) -> tuple[float, float]:
    """``(relative_error, sqnr_db)``: ``e = tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)``, ``SQNR = −10·log10 e`` dB, float64.

    An exact reconstruction gives ``(0.0, inf)``. ``signal``: ``tr(W H Wᵀ)`` from :func:`output_signal`, for a
    caller comparing many Ŵ of one W (computed here otherwise).
    """
    _check_pair(weight, weight_hat)
    signal = output_signal(weight, gram) if signal is None else signal
    relative = max(_quadratic_trace(weight_hat.double() - weight.double(), gram), 0.0) / signal
    return relative, _to_db(relative)


def output_signal(weight: torch.Tensor, gram: torch.Tensor) -> float:
    """``tr(W H Wᵀ) = ‖X Wᵀ‖²_F``, the output energy on the calibration data, float64 (PvqError when it is 0)."""
    if gram.shape != (weight.shape[1], weight.shape[1]):
        raise PvqError(f"the Gram matrix must be {weight.shape[1]}×{weight.shape[1]}, got {tuple(gram.shape)}")
    signal = _quadratic_trace(weight.double(), gram)
    if not signal > 0:
        raise PvqError("the layer output W·X is zero on the calibration data; the relative error is undefined")
    return signal


def weight_sqnr_db(weight: torch.Tensor, weight_hat: torch.Tensor) -> float:
    """Weight-domain SQNR ``10·log10(‖W‖²_F / ‖W − Ŵ‖²_F)`` in dB, float64 (inf when Ŵ = W)."""
    _check_pair(weight, weight_hat)
    w = weight.double()
    signal = float((w * w).sum())
    if not signal > 0:
        raise PvqError("the weight is all zeros; its SQNR is undefined")
    return _to_db(float(((weight_hat.double() - w) ** 2).sum()) / signal)


def _quadratic_trace(matrix: torch.Tensor, gram: torch.Tensor) -> float:
    """``tr(M H Mᵀ) = Σ_ij (M H)_ij M_ij`` in float64."""
    return float(((matrix @ gram.double()) * matrix).sum())


def _to_db(relative_error: float) -> float:
    return math.inf if relative_error == 0 else -10.0 * math.log10(relative_error)


def _check_pair(weight: torch.Tensor, weight_hat: torch.Tensor) -> None:
    if weight.shape != weight_hat.shape:
        raise PvqError(
            f"the compressed weight has shape {tuple(weight_hat.shape)}, expected {tuple(weight.shape)}"
        )
