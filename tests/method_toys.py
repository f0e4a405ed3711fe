"""The random test layer shared by the compression-method tests, and independent reference computations.

``random_layer`` builds W (64×128) and inputs X (512×128) with correlated columns and a few outlier
columns (activation norms ~20× the rest), as in LLM activations (Dettmers et al. 2022). ``naive_obs``
is the textbook Optimal Brain Surgeon / OBQ sweep with an explicitly downdated inverse Hessian
(Frantar et al. 2022, Eq. 2–3), independent of the Cholesky-blocked sweep under test.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

OUTLIER_COLUMNS = (3, 40, 77, 100)


def random_layer(seed: int = 0, rows: int = 64, columns: int = 128, tokens: int = 512):
    """``(W float32, X float64, H = XᵀX float64)`` of a seeded random layer with outlier input columns."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, columns, generator=generator)
    mixing = torch.eye(columns, dtype=torch.float64) + 0.3 * torch.randn(
        columns, columns, generator=generator, dtype=torch.float64
    )
    inputs = torch.randn(tokens, columns, generator=generator, dtype=torch.float64) @ mixing
    inputs[:, [c for c in OUTLIER_COLUMNS if c < columns]] *= 20
    return weight, inputs, inputs.T @ inputs


def direct_output_error(weight: torch.Tensor, weight_hat: torch.Tensor, inputs: torch.Tensor) -> float:
    """``‖X (Ŵ − W)ᵀ‖² / ‖X Wᵀ‖²`` computed on the inputs themselves."""
    w = weight.double()
    return float((inputs @ (weight_hat.double() - w).T).square().sum() / (inputs @ w.T).square().sum())


def naive_obs(
    weight: torch.Tensor, gram: torch.Tensor, target: Callable[[int, torch.Tensor], torch.Tensor], percdamp: float
) -> torch.Tensor:
    """Fix columns left to right to ``target(j, w_j)``; the rest absorb ``δ·[H⁻¹]_{j,:} / [H⁻¹]_jj``."""
    current = weight.double().clone()
    damped = gram + percdamp * torch.diagonal(gram).mean() * torch.eye(gram.shape[0], dtype=torch.float64)
    inverse = torch.linalg.inv(damped)
    result = torch.empty_like(current)
    for j in range(current.shape[1]):
        result[:, j] = target(j, current[:, j])
        error = (current[:, j] - result[:, j]) / inverse[j, j]
        current -= error[:, None] * inverse[j, :][None, :]
        inverse = inverse - torch.outer(inverse[:, j], inverse[j, :]) / inverse[j, j]
    return result
