"""Streaming Gram matrices H = XᵀX of layer inputs, the sufficient statistic of every per-layer error.

For a linear layer y = x Wᵀ and any replacement Ŵ, the squared output error over calibration tokens
X (t × n) is ‖X(Ŵ − W)ᵀ‖²_F = tr(ΔW H ΔWᵀ) with H = XᵀX (Frantar & Alistarh, GPTQ/SparseGPT keep
H = 2XᵀX/t; we keep the unscaled sum plus the token count t, so H/t is the second-moment matrix).

Accumulation is float64 across batches; each batch's product is formed in the input's precision
(float32) on the input's device, upper block triangle only (:func:`batch_gram_upper`).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from scipy.linalg import blas

from theory.errors import PvqError

GRAM_PANEL = 192
"""Column-panel width of :func:`batch_gram_upper`: panels of about this many features."""


def batch_gram_upper(x: torch.Tensor, panel: int = GRAM_PANEL) -> torch.Tensor:
    """Upper block triangle of xᵀx for a (t × n) batch, in x's precision (zeros below it).

    The n features are cut into k ≈ n / ``panel`` column panels P_1..P_k and only the panels of the upper block
    triangle are formed, xᵀx[P_i, P_i ∪ … ∪ P_k] = x[:, P_i]ᵀ x[:, P_i:], one matmul each: (k + 1) / (2k) of the
    FLOPs of x.T @ x. Unlike BLAS ``ssyrk`` (half the FLOPs) it runs on torch's own GEMM and thread pool, on any
    device; ``benchmarks/bench_capture.py`` times the three kernels side by side.
    """
    features = x.shape[-1]
    panels = max(1, round(features / panel))
    edges = [round(i * features / panels) for i in range(panels + 1)]
    upper = torch.zeros(features, features, dtype=x.dtype, device=x.device)
    for start, stop in itertools.pairwise(edges):
        upper[start:stop, start:] = x[:, start:stop].T @ x[:, start:]
    return upper


def batch_gram_syrk(x: torch.Tensor) -> torch.Tensor:
    """Upper triangle of xᵀx for a float32/float64 CPU batch by BLAS ``?syrk`` (for the benchmark)."""
    rows = x.numpy()
    kernel = blas.ssyrk if x.dtype == torch.float32 else blas.dsyrk
    return torch.from_numpy(kernel(1.0, rows.T, trans=0, lower=0))


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
        if rows.dtype not in (torch.float32, torch.float64):
            rows = rows.float()
        upper = batch_gram_upper(rows.contiguous())
        # A NaN or Inf input (or a square overflowing float32) shows on the diagonal Σ_t x_tj²: a check on
        # n numbers instead of t·n.
        if not torch.isfinite(torch.diagonal(upper)).all():
            raise PvqError(
                f"NaN or Inf in the input activations of {self.name or 'a layer'}; "
                "check the model weights and the calibration text"
            )
        self._upper += upper.to(device="cpu", dtype=torch.float64)
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
