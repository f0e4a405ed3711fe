"""Streaming Gram matrices H = XᵀX of layer inputs, the sufficient statistic of every per-layer error.

For a linear layer y = x Wᵀ and any replacement Ŵ, the squared output error over calibration tokens
X (t × n) is ‖X(Ŵ − W)ᵀ‖²_F = tr(ΔW H ΔWᵀ) with H = XᵀX (Frantar & Alistarh, GPTQ/SparseGPT keep
H = 2XᵀX/t; we keep the unscaled sum plus the token count t, so H/t is the second-moment matrix).

Accumulation is float64 across batches; each batch's product is formed in the input's precision
(float32) with a symmetric rank-k update (BLAS ``ssyrk``: half the FLOPs of a matmul) on the CPU and
a matmul on accelerators.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.linalg import blas

from theory.errors import PvqError


def _batch_gram_upper(x: torch.Tensor) -> torch.Tensor:
    """Upper triangle (or all) of xᵀx for a (t × n) batch, in x's precision."""
    if x.device.type == "cpu" and x.dtype == torch.float32:
        rows = x.numpy()
        return torch.from_numpy(blas.ssyrk(1.0, rows.T, trans=0, lower=0))
    if x.device.type == "cpu" and x.dtype == torch.float64:
        rows = x.numpy()
        return torch.from_numpy(blas.dsyrk(1.0, rows.T, trans=0, lower=0))
    return torch.triu(x.T @ x)


class GramAccumulator:
    """H = Σ_t x_t x_tᵀ over every token seen, in float64, with the token count.

    ``keep_rows`` > 0 also keeps the first ``keep_rows`` input rows (float64) so tests and users can
    check Gram-based errors against directly computed ones.
    """

    def __init__(self, dim: int, keep_rows: int = 0, name: str = "") -> None:
        self.dim = dim
        self.name = name
        self.tokens = 0
        self.keep_rows = keep_rows
        self._upper = torch.zeros(dim, dim, dtype=torch.float64)
        self._rows: list[torch.Tensor] = []
        self._kept = 0

    def add(self, x: torch.Tensor) -> None:
        """Accumulate the rows of ``x`` (any leading shape, last dimension = ``dim``)."""
        rows = x.detach().reshape(-1, x.shape[-1])
        if rows.shape[-1] != self.dim:
            raise PvqError(f"Gram {self.name}: input has {rows.shape[-1]} features, expected {self.dim}")
        if not torch.isfinite(rows).all():
            raise PvqError(
                f"NaN or Inf in the input activations of {self.name or 'a layer'}; "
                "check the model weights and the calibration text"
            )
        if rows.dtype not in (torch.float32, torch.float64):
            rows = rows.float()
        self._upper += _batch_gram_upper(rows.contiguous()).to(device="cpu", dtype=torch.float64)
        self.tokens += rows.shape[0]
        if self._kept < self.keep_rows:
            take = rows[: self.keep_rows - self._kept].to(device="cpu", dtype=torch.float64)
            self._rows.append(take)
            self._kept += take.shape[0]

    @property
    def gram(self) -> torch.Tensor:
        """The symmetric (dim × dim) float64 Gram matrix."""
        upper = torch.triu(self._upper)
        return upper + upper.T - torch.diag(torch.diagonal(upper))

    @property
    def sample(self) -> torch.Tensor | None:
        """The kept input rows (first ``keep_rows`` tokens), or None."""
        return torch.cat(self._rows) if self._rows else None

    def to_numpy(self) -> np.ndarray:
        return self.gram.numpy()
