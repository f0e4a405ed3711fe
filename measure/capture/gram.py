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
"""Column-panel width of :func:`gram_panels`: panels of about this many features (192 measured best of
128/192/288 in the capture on SmolLM2, 2 threads)."""


def gram_panels(x: torch.Tensor, panel: int = GRAM_PANEL) -> list[tuple[int, int, torch.Tensor]]:
    """The panels (start, stop, x[:, start:stop]ᵀ x[:, start:]) of the upper block triangle of xᵀx.

    The n features of a (t × n) batch are cut into k ≈ n / ``panel`` column panels P_1..P_k; panel i is
    xᵀx[P_i, P_i ∪ … ∪ P_k], one matmul, in x's precision: (k + 1) / (2k) of the FLOPs of x.T @ x. BLAS ``ssyrk``
    (half the FLOPs) is faster alone, but called between torch's operations its OpenBLAS thread pool contends
    with torch's, which made the whole capture several times slower on 2 cores; panels run on torch's own GEMM
    and threads, on any device. ``benchmarks/bench_capture.py`` times the kernels inside the capture and alone.
    """
    features = x.shape[-1]
    count = max(1, round(features / panel))
    edges = [round(i * features / count) for i in range(count + 1)]
    return [(start, stop, x[:, start:stop].T @ x[:, start:]) for start, stop in itertools.pairwise(edges)]


def assemble_panels(
    panels: list[tuple[int, int, torch.Tensor]], features: int, dtype: torch.dtype, device: torch.device | str
) -> torch.Tensor:
    """The (features × features) matrix holding ``panels`` at their rows and columns, zeros elsewhere."""
    upper = torch.zeros(features, features, dtype=dtype, device=device)
    for start, stop, block in panels:
        upper[start:stop, start:] = block
    return upper


def batch_gram_upper(x: torch.Tensor, panel: int = GRAM_PANEL) -> torch.Tensor:
    """Upper block triangle of xᵀx for a (t × n) batch from :func:`gram_panels`, zeros below it."""
    return assemble_panels(gram_panels(x, panel), x.shape[-1], x.dtype, x.device)


def batch_gram_syrk(x: torch.Tensor) -> torch.Tensor:
    """Upper triangle of xᵀx for a float32/float64 CPU batch by BLAS ``?syrk`` (for the benchmark)."""
    rows = x.numpy()
    kernel = blas.ssyrk if x.dtype == torch.float32 else blas.dsyrk
    return torch.from_numpy(kernel(1.0, rows.T, trans=0, lower=0))


class GramAccumulator:
    """H = Σ_t x_t x_tᵀ over every token seen, in float64, with the token count.

    Only the panels of the upper block triangle are stored (:func:`gram_panels`; about 60 % of n² for the
    widths of SmolLM2), created from the first batch's products rather than zero-filled first.
    ``keep_rows`` > 0 also keeps the first ``keep_rows`` input rows (float64) so tests and users can
    check Gram-based errors against directly computed ones. With ``accumulate=False`` only those rows are kept
    and no Gram is formed: what a few sink positions need, where a full Gram of a wide layer would cost
    n² · 4.8 bytes for a matrix of rank ``keep_rows`` (about 110 MB for an input of 4,864 features).
    :meth:`release` frees the panels once a caller holds the copy it needs.
    """

    def __init__(self, dim: int, keep_rows: int = 0, name: str = "", accumulate: bool = True) -> None:
        self.dim = dim
        self.name = name
        self.tokens = 0
        self.keep_rows = keep_rows
        self.accumulate = accumulate
        self.released = False
        self._panels: list[tuple[int, int, torch.Tensor]] = []
        self._rows: list[torch.Tensor] = []
        self._kept = 0

    def add(self, x: torch.Tensor) -> None:
        """Accumulate the rows of ``x`` (any leading shape, last dimension = ``dim``)."""
        rows = x.detach().reshape(-1, x.shape[-1])
        if rows.shape[-1] != self.dim:
            raise PvqError(f"Gram {self.name}: input has {rows.shape[-1]} features, expected {self.dim}")
        if rows.dtype not in (torch.float32, torch.float64):
            rows = rows.float()
        if self.released:
            raise PvqError(f"Gram {self.name}: released, it can take no more rows; capture again")
        if not self.accumulate:
            self._keep(rows)
            self.tokens += rows.shape[0]
            return
        panels = gram_panels(rows.contiguous())
        # A NaN or Inf input (or a square overflowing float32) shows on the diagonal Σ_t x_tj²: a check on
        # n numbers instead of t·n.
        diagonals = [torch.diagonal(block[:, : stop - start]) for start, stop, block in panels]
        if not all(torch.isfinite(diagonal).all() for diagonal in diagonals):
            raise PvqError(
                f"NaN or Inf in the input activations of {self.name or 'a layer'}; "
                "check the model weights and the calibration text"
            )
        if not self._panels:
            self._panels = [(start, stop, block.to(device="cpu", dtype=torch.float64, copy=True))
                            for start, stop, block in panels]  # fmt: skip
        else:
            for (_, _, block), (_, _, total) in zip(panels, self._panels, strict=True):
                total += block.to(device="cpu", dtype=torch.float64)
        self.tokens += rows.shape[0]
        self._keep(rows)

    def _keep(self, rows: torch.Tensor) -> None:
        """Keep the first rows up to ``keep_rows`` (float64); without a Gram their own values are checked."""
        if self._kept >= self.keep_rows:
            return
        take = rows[: self.keep_rows - self._kept].to(device="cpu", dtype=torch.float64)
        if not self.accumulate and not torch.isfinite(take).all():
            raise PvqError(
                f"NaN or Inf in the input activations of {self.name or 'a layer'}; "
                "check the model weights and the calibration text"
            )
        self._rows.append(take)
        self._kept += take.shape[0]

    def release(self) -> None:
        """Free the Gram's panels (the kept rows stay); reading the Gram afterwards is an error, never zeros."""
        self._panels = []
        self.released = True

    @property
    def gram(self) -> torch.Tensor:
        """The symmetric (dim × dim) float64 Gram matrix (zeros before any batch)."""
        if not self.accumulate or self.released:
            why = "was released after use" if self.released else "keeps input rows only (accumulate=False)"
            raise PvqError(f"Gram {self.name or 'of a layer'} {why}: capture again to read it")
        upper = torch.triu(assemble_panels(self._panels, self.dim, torch.float64, "cpu"))
        return upper + upper.T - torch.diag(torch.diagonal(upper))

    @property
    def sample(self) -> torch.Tensor | None:
        """The kept input rows (first ``keep_rows`` tokens), or None."""
        return torch.cat(self._rows) if self._rows else None

    def to_numpy(self) -> np.ndarray:
        return self.gram.numpy()
