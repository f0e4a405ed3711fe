"""AWQ (Lin et al., MLSys 2024, arXiv 2306.00978): activation-aware per-input-channel scaling before rounding.

Input channel j is scaled by ``s_j = a_j^α`` before group quantization and unscaled after, so the layer computes
``x·Ŵᵀ`` with ``Ŵ = Q(W·diag(s))·diag(s)⁻¹`` (Sec. 3.2, Eq. 4–5): salient channels (large activations) get a
finer effective grid. Here

* ``a_j = √(H_jj / T)``, the RMS of input channel j over the T calibration tokens, read off the Gram
  ``H = XᵀX`` (the reference code uses the mean of ``|x_j|``, a statistic the Gram does not hold). The scales
  are normalized as in the reference implementation, ``s ← s / √(max s · min s)``, so T cancels and the
  scales are computed from ``√H_jj``; channels with ``H_jj = 0`` (no activation) take the smallest positive a.
* α is searched on :data:`ALPHAS` (21 points in [0, 1]) for the smallest relative output error
  ``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`` (:class:`measure.compress.methods.metrics.LayerErrorMeter`: the exact squared
  output error
  on the calibration inputs, which AWQ's search estimates on a sample); ties keep the smallest α.
* ``Q`` is the round-to-nearest group quantizer of ``rtn``
(:func:`measure.compress.methods.quantization.rtn_quantize`)
  with the same bits, groups, symmetry and clipping: by default the symmetric grid of GPTQ's convention
  (codes ``0…2^b − 1``, ``z = 2^(b−1)``, ``s = 2·max|w|/(2^b − 1)``), or min-max with an integer zero point.

α = 0 gives s = 1, so Ŵ is RTN's result bit for bit, and AWQ's error is never above RTN's on the Gram searched.
Storage: the same as ``rtn`` at the same grid; ``diag(s)⁻¹`` is assumed folded into the operation producing the
layer's input (the preceding norm or linear layer, as AWQ does), so the scales cost nothing. The search picks α
per layer; layers that read one input (q, k, v; gate, up) would share one folded s in a deployed model, so the
per-layer choice is the favourable end of AWQ at this size. Zeros stay zero (0·s_j rounds to 0), so pruned
weights stay pruned when AWQ follows a pruner.
"""

from __future__ import annotations

import torch

from measure.compress.methods.metrics import LayerErrorMeter
from measure.compress.methods.quantization import rtn_quantize
from theory.errors import PvqError

ALPHAS = torch.linspace(0.0, 1.0, 21, dtype=torch.float64)
"""The exponents α searched: 0, 0.05, …, 1 (AWQ's grid of 20 ratios in [0, 1), plus 1)."""


def channel_rms(gram: torch.Tensor) -> torch.Tensor:
    """``a_j ∝ √H_jj``: the RMS of input channel j up to the factor √T; zero channels take the smallest positive
    value (all ones when no channel is active)."""
    norms = torch.diagonal(gram).clamp_min(0).sqrt()
    positive = norms[norms > 0]
    return norms.clamp_min(positive.min()) if positive.numel() else torch.ones_like(norms)


def awq_scales(rms: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s = a^α / √(max a^α · min a^α)`` (the normalization of the AWQ reference code); all ones at α = 0."""
    scales = rms**alpha
    return scales / (scales.max() * scales.min()).sqrt()


def awq_quantize_at(weight: torch.Tensor, scales: torch.Tensor, **grid: object) -> torch.Tensor:
    """``Q(W·diag(s))·diag(s)⁻¹`` with ``Q`` the RTN group quantizer at the grid options ``grid``."""
    return rtn_quantize(weight * scales[None, :], **grid) / scales[None, :]


def awq_quantize(
    weight: torch.Tensor,
    gram: torch.Tensor,
    *,
    bits: int,
    group: str | int,
    symmetric: bool,
    clip: str,
) -> torch.Tensor:
    """AWQ (module docstring): the compressed weight of :func:`search_alpha` at these grid options."""
    return search_alpha(weight, gram, bits=bits, group=group, symmetric=symmetric, clip=clip)[1]


def search_alpha(weight: torch.Tensor, gram: torch.Tensor, **grid: object) -> tuple[float, torch.Tensor]:
    """``(α, Ŵ)``: the α of :data:`ALPHAS` whose ``Q(W·diag(s))·diag(s)⁻¹`` has the smallest relative output
    error (the first on ties); a layer whose output is zero on the calibration data gets RTN (α = 0)."""
    rms = channel_rms(gram)
    best_alpha, best = 0.0, awq_quantize_at(weight, awq_scales(rms, 0.0), **grid)
    try:
        meter = LayerErrorMeter(weight, gram)
    except PvqError:
        return best_alpha, best
    best_error = meter.relative_error(best)
    for alpha in ALPHAS[1:].tolist():
        candidate = awq_quantize_at(weight, awq_scales(rms, alpha), **grid)
        error = meter.relative_error(candidate)
        if error < best_error:
            best_alpha, best, best_error = alpha, candidate, error
    return best_alpha, best
