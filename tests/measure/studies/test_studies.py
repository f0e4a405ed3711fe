"""The studies' helpers read specs through the spec grammar (:mod:`measure.compress.spec`)."""

from __future__ import annotations

import pytest

from measure.studies.frontier import spec_family, spec_method


@pytest.mark.parametrize(("spec", "method", "family"), [
    ("gptq:4:g128", "gptq", "quantization"), ("sparsegpt:0.5", "sparsegpt", "pruning"),
    ("sparsegpt:0.5+gptq:4:g128", "sparsegpt+gptq", "joint"),
    ("magnitude:0.5@mlp+rtn:4@attention", "magnitude+rtn", "joint"),
    ("gptq:4:g128@layer=model.layers.0.mlp.down_proj", "gptq", "quantization"),
])  # fmt: skip
def test_spec_method_and_family_follow_the_parsed_steps(spec, method, family):
    assert spec_method(spec) == method
    assert spec_family(spec) == family
