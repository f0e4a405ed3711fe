"""Synthetic chunk problems shared by the theory tests (exact quantization, exact pruning, SDP bounds)."""

from __future__ import annotations

import numpy as np

from theory.chunk_problem import ChunkProblem, damped_gram, make_chunk_problem
from theory.synthetic_layer import synthetic_gram, synthetic_weights


def synthetic_chunk(
    seed: int, size: int, noise: float = 0.2, relative_damping: float = 1e-3, tokens: int = 256
) -> ChunkProblem:
    """A chunk of a synthetic LLM-like layer (outlier channels included): the damped Gram of ``tokens``
    rank-4 activations with one outlier channel, and one row of weights, all drawn from ``default_rng(seed)``."""
    generator = np.random.default_rng(seed)
    activations_gram = synthetic_gram(generator, width=size, tokens=tokens, rank=4, outliers=1, noise=noise)
    gram, _ = damped_gram(activations_gram, relative_damping)
    return make_chunk_problem(synthetic_weights(generator, 1, size)[0], gram)
