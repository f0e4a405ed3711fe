"""Compress one linear layer on its Gram and measure its relative output error: the per-layer step of every table.

A layer y = x Wᵀ with calibration inputs X (tokens × in) has the Gram H = XᵀX. A layer step's method maps (W, H)
to Ŵ (data-free methods read W only); the relative output error of Ŵ on a Gram H' (H itself, or the Gram of other
data) is

    e = ‖X'(Ŵ − W)ᵀ‖²_F / ‖X'Wᵀ‖²_F = tr(ΔW H' ΔWᵀ) / tr(W H' Wᵀ),   ΔW = Ŵ − W,

the layer-wise objective of OBS / GPTQ (Frantar et al. 2022, arXiv 2210.17323, Eq. 1), in float64
(:class:`measure.compress.methods.metrics.LayerErrorMeter`). The ledger, :func:`measure.compress.apply.apply_spec`,
the removal study's views and the mixture's sensitivities all compress a layer with :func:`compress_layer`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from measure.compress.methods.metrics import LayerErrorMeter
from measure.compress.spec import LayerStep
from measure.models.architecture import LinearRef
from theory.sqnr import relative_error_db


def method_weight(ref: LinearRef) -> torch.Tensor:
    """A CPU copy of ``ref``'s weight as the methods take it: float64 stays, other precisions become float32
    (float16 and bfloat16 values are exact in float32); ``set_weight`` casts a result back to the model's."""
    weight = ref.weight().detach()
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    return weight.to(device="cpu", dtype=dtype, copy=True)


@dataclass(frozen=True)
class CompressedLayer:
    """One layer compressed by one step: W as the method took it, Ŵ, the method's run time [s], and the relative
    output error e = tr(ΔW H' ΔWᵀ) / tr(W H' Wᵀ) on the measuring Gram H' (NaN when none was given)."""

    weight: torch.Tensor
    weight_hat: torch.Tensor
    seconds: float
    relative_error: float = math.nan

    @property
    def sqnr_db(self) -> float:
        """Output SQNR −10·log10 e in dB (+∞ for e = 0, NaN without a measuring Gram)."""
        return relative_error_db(self.relative_error)


def compress_layer(
    weight: torch.Tensor, step: LayerStep, gram: torch.Tensor | None, meter: LayerErrorMeter | None = None
) -> CompressedLayer:
    """Ŵ = ``step``'s method applied to ``weight`` (reading the fitting Gram ``gram`` when the method needs one),
    timed, and its relative output error on ``meter``'s Gram (the meter of this ``weight``; NaN without one).

    ``weight`` is the layer's weight as :func:`method_weight` gives it; the model is not changed.
    """
    start = time.perf_counter()
    weight_hat = step.method.apply(weight, gram if step.method.needs_gram else None, step.params)
    seconds = time.perf_counter() - start
    relative = math.nan if meter is None else meter.relative_error(weight_hat)
    return CompressedLayer(weight, weight_hat, seconds, relative)
