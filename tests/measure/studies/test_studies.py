"""The studies' helpers: specs read through the spec grammar (:mod:`measure.compress.spec`), the layers a sweep
looks at and the parameters by part, against independent counts."""

from __future__ import annotations

import pytest
from tiny_models import tiny_model

from measure.models.architecture import describe
from measure.studies.frontier import spec_family, spec_method
from measure.studies.layers import parameter_summary, sweep_blocks, sweep_layers


@pytest.mark.parametrize(("spec", "method", "family"), [
    ("gptq:4:g128", "gptq", "quantization"), ("sparsegpt:0.5", "sparsegpt", "pruning"),
    ("sparsegpt:0.5+gptq:4:g128", "sparsegpt+gptq", "joint"),
    ("magnitude:0.5@mlp+rtn:4@attention", "magnitude+rtn", "joint"),
    ("gptq:4:g128@layer=model.layers.0.mlp.down_proj", "gptq", "quantization"),
])  # fmt: skip
def test_spec_method_and_family_follow_the_parsed_steps(spec, method, family):
    assert spec_method(spec) == method
    assert spec_family(spec) == family


@pytest.mark.parametrize(("count", "positions", "blocks"), [
    (30, ["first", "middle", "last"], [0, 14, 29]), (1, ["first", "middle", "last"], [0]), (4, ["middle"], [1]),
])  # fmt: skip
def test_sweep_blocks_name_the_first_middle_and_last_block_once(count, positions, blocks):
    assert sweep_blocks(count, positions) == blocks


def test_sweep_layers_are_the_roles_of_the_chosen_blocks_in_block_order():
    model = tiny_model("llama", num_hidden_layers=3)
    layers = sweep_layers(model, ["last", "first"], ["q", "down"])
    arch = describe(model)
    expected = [(ref.name, ref.role) for index in (0, 2) for ref in arch.blocks[index].linears
                if ref.role in ("q", "down")]  # fmt: skip
    assert layers == expected and len(layers) == 4


def test_parameter_summary_parts_add_up_to_the_total():
    model = tiny_model("llama", num_hidden_layers=2)
    summary = parameter_summary(model).set_index("part")
    total = sum(p.numel() for p in model.parameters())
    assert summary.at["total", "parameters"] == total
    assert summary.drop("total")["parameters"].sum() == total
    assert summary["share_pct"].drop("total").sum() == pytest.approx(100.0)
    assert set(summary["blocks"]) == {2}
