"""Input checks shared by every compression method: a finite 2-D float weight and a matching finite Gram."""

from __future__ import annotations

import torch

from theory.errors import PvqError


def check_weight(weight: torch.Tensor) -> None:
    """Raise unless ``weight`` is a finite 2-D float32/float64 tensor (out_features × in_features)."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise PvqError("the weight must be a 2-D torch tensor (out_features × in_features)")
    if weight.dtype not in (torch.float32, torch.float64):
        raise PvqError(f"the weight must be float32 or float64, got {weight.dtype}; convert it with .float()")
    if weight.numel() == 0:
        raise PvqError("the weight is empty")
    if not torch.isfinite(weight).all():
        raise PvqError("the weight contains NaN or Inf values; compress only finite weights")


def check_gram(gram: torch.Tensor | None, in_features: int, required: bool, method: str) -> None:
    """Raise unless ``gram`` is a finite ``in × in`` tensor (or absent and not ``required``)."""
    if gram is None:
        if required:
            raise PvqError(
                f"method {method!r} needs the Gram matrix H = XᵀX of the layer's inputs; capture activations first"
            )
        return
    if not isinstance(gram, torch.Tensor) or gram.shape != (in_features, in_features):
        shape = tuple(gram.shape) if isinstance(gram, torch.Tensor) else type(gram).__name__
        raise PvqError(f"the Gram matrix must be {in_features}×{in_features} (in_features²), got {shape}")
    if not torch.isfinite(gram).all():
        raise PvqError("the Gram matrix contains NaN or Inf values; recapture the activations")
