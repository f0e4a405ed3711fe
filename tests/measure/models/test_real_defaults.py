"""The walker and grid detection on all three embedded real defaults (fetched once from PyPI)."""

from __future__ import annotations

import pytest
import torch

from measure.models.architecture import describe, parameter_counts
from measure.models.defaults import DEFAULT_MODELS
from measure.models.load import load_model
from measure.models.weight_grid import detect_linear_grid

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


@pytest.mark.parametrize("name", sorted(DEFAULT_MODELS))
def test_the_offline_shapes_of_every_default_are_its_real_config(name: str) -> None:
    from default_shapes import DEFAULT_SHAPES

    model = load_model(name).model
    text = model.config.get_text_config()
    _, model_class, dimensions = DEFAULT_SHAPES[name]
    assert type(model).__name__ == model_class
    assert {key: getattr(text, key) for key in dimensions} == dimensions
    assert (getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads) == (
        dimensions.get("head_dim") or dimensions["hidden_size"] // dimensions["num_attention_heads"])


def test_the_removal_studys_first_stage_runs_on_gemma3_270m() -> None:
    from figures.catalog.models import calibration
    from figures.catalog.removal import SETTINGS, study_settings
    from measure.compress.importance import measure_importance
    from measure.compress.shrink.units import head_units
    from measure.removal.study import check_for_model, removal_levels, unit_table

    loaded = load_model("gemma3-270m")
    settings = study_settings(SETTINGS)
    widths = check_for_model(settings, loaded.model).set_index("option")
    assert widths.loc["heads=0.34", "status"] == "left out"
    assert widths.loc["mlp=0.25:score=wanda", "status"] == "as requested"
    arch = describe(loaded.model)
    assert all(unit.extras == {} for unit in head_units(arch))  # per-head q/k norms, kept whole
    batches = calibration(loaded, {"sequences": 2, "sequence_length": 128, "batch_size": 2, "mode": "parallel"})
    importance = measure_importance(loaded.model, batches, arch)
    units = unit_table(importance, arch)
    assert units.groupby("unit").size().to_dict() == {"attention": 18, "block": 18, "mlp": 18}
    assert units["influence"].between(0, 2).all() and units["influence"].gt(0).any()
    levels = removal_levels(importance, arch, settings)
    assert len(levels) == len(settings.orderings) * settings.max_removed
    for _, rows in levels.groupby("ordering"):
        assert rows["removed_fraction"].is_monotonic_increasing and (rows["removed_fraction"] > 0).all()
