"""The random layer of :mod:`method_toys` has the outlier columns and correlations the method tests rely on."""

from __future__ import annotations

import torch
from method_toys import OUTLIER_COLUMNS, random_layer


def test_random_layer_has_outlier_columns_and_correlations() -> None:
    weight, inputs, gram = random_layer()
    norms = torch.diagonal(gram).sqrt()
    regular = [c for c in range(128) if c not in OUTLIER_COLUMNS]
    assert norms[list(OUTLIER_COLUMNS)].min() > 10 * norms[regular].max()
    correlation = torch.corrcoef(inputs[:, regular].T)
    assert correlation.fill_diagonal_(0).abs().max() > 0.3
    assert weight.dtype == torch.float32
