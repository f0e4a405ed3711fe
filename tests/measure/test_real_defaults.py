"""The walker and grid detection on all three embedded real defaults (fetched once from PyPI)."""

from __future__ import annotations

import pytest
import torch

from measure.models.architecture import describe, parameter_counts
from measure.models.defaults import DEFAULT_MODELS
from measure.models.weight_grid import detect_linear_grid
from measure.models.load import load_model

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", sorted(DEFAULT_MODELS))
def test_walker_covers_every_block_linear_of_the_real_default(name: str) -> None:
    default = DEFAULT_MODELS[name]
    loaded = load_model(name)
    arch = describe(loaded.model)
    assert len(arch.blocks) == default.num_blocks == loaded.model.config.num_hidden_layers
    assert arch.family == default.architecture
    assert loaded.bos_per_window == default.bos_per_window
    direct = {n for n, m in loaded.model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}
    assert {ref.name for ref in arch.linears} == direct
    counts = parameter_counts(arch)
    assert counts["total"] == sum(p.numel() for p in loaded.model.parameters())
    assert counts["lm_head"] == (0 if arch.tied_embeddings else loaded.model.lm_head.weight.numel())
    grid = detect_linear_grid(loaded.model)
    assert grid.tensors == len(direct)
    assert grid.on_grid > 0, "every default was GGUF-quantized; some block linears must sit on a grid"
