"""Synthetic LLM-like layer inputs and weights, for tests and benchmarks until real Grams are captured.

Activations ``X`` (tokens × width) mimic what a linear layer of a transformer sees:

* correlated channels: a shared low-rank part ``F·L`` (rank ``rank``) plus independent noise scaled by
  ``noise`` (small noise → strongly collinear channels and an ill-conditioned Gram);
* heavy-tailed tokens: Student-t (5 degrees of freedom) factors and noise;
* strongly varying channel norms: log-normal channel scales (σ = 0.5);
* a few outlier channels, 20–60× larger and with a constant offset, like the outlier features of
  Dettmers et al. (LLM.int8(), 2022) and the massive activations of Sun et al. (2024).

Weights are Student-t (6 degrees of freedom) with standard scale 0.02, a typical initializer scale.
"""

from __future__ import annotations

import numpy as np

from theory.errors import PvqError


def synthetic_activations(
    generator: np.random.Generator, width: int, tokens: int = 4096, rank: int = 16, outliers: int = 4,
    noise: float = 1.0,
) -> np.ndarray:
    """LLM-like activations ``X`` of shape (tokens, width) (module docstring)."""
    if not (width >= 1 and tokens >= 1 and rank >= 1 and 0 <= outliers <= width and noise >= 0):
        raise PvqError("synthetic activations need width, tokens, rank >= 1, 0 <= outliers <= width, noise >= 0")
    factors = generator.standard_t(5, size=(tokens, rank))
    loadings = generator.standard_normal((rank, width)) * 1.5 / np.sqrt(rank)
    activations = factors @ loadings + noise * generator.standard_t(5, size=(tokens, width))
    scales = np.exp(generator.normal(0.0, 0.5, width))
    outlier_channels = generator.choice(width, outliers, replace=False)
    scales[outlier_channels] *= generator.uniform(20.0, 60.0, outliers)
    activations = activations * scales
    activations[:, outlier_channels] += generator.normal(0.0, 1.0, outliers) * scales[outlier_channels]
    return activations


def synthetic_gram(
    generator: np.random.Generator, width: int, tokens: int = 4096, rank: int = 16, outliers: int = 4,
    noise: float = 1.0,
) -> np.ndarray:
    """``H = XᵀX`` of :func:`synthetic_activations`."""
    activations = synthetic_activations(generator, width, tokens, rank, outliers, noise)
    return activations.T @ activations


def synthetic_weights(generator: np.random.Generator, rows: int, width: int) -> np.ndarray:
    """Student-t (6 d.o.f.) weights with scale 0.02, shape (rows, width)."""
    return 0.02 * generator.standard_t(6, size=(rows, width))
