"""`weights_installed`: the given weights serve the forward pass inside the context, and the model leaves it
exactly as it was, for every storage layout (nn.Linear swapped in, GPT-2's transposed Conv1D and fused experts
copied), also when the body raises."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import tiny_model

from measure.compress.apply import weights_installed
from measure.models.architecture import describe
from theory.errors import PvqError


def _forward(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.arange(3, 19).reshape(2, 8)
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("family", ["llama", "gpt2", "mixtral", "gpt_oss"])
def test_installed_weights_serve_the_forward_and_the_model_is_restored_exactly(family: str) -> None:
    model = tiny_model(family)
    refs = describe(model).linears
    generator = torch.Generator().manual_seed(0)
    pairs = [(ref, torch.randn(ref.out_features, ref.in_features, generator=generator)) for ref in refs]
    expected = copy.deepcopy(model)
    for ref, weight in zip(describe(expected).linears, (w for _, w in pairs), strict=True):
        ref.set_weight(weight)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    storage = [parameter.data_ptr() for parameter in model.parameters()]
    given = [weight.clone() for _, weight in pairs]
    with weights_installed(pairs):
        assert all(torch.equal(ref.weight(), weight) for ref, weight in pairs)
        assert torch.equal(_forward(model), _forward(expected))
    assert all(torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())
    assert [parameter.data_ptr() for parameter in model.parameters()] == storage
    assert all(torch.equal(weight, kept) for (_, weight), kept in zip(pairs, given, strict=True))
    with pytest.raises(RuntimeError, match="inside"), weights_installed(pairs):
        raise RuntimeError("inside")
    assert all(torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())


def test_nested_installs_unwind_to_the_original_weights() -> None:
    model = tiny_model("llama")
    ref = describe(model).linears[0]
    original = ref.weight().clone()
    first, second = torch.zeros_like(original), torch.ones_like(original)
    with weights_installed([(ref, first)]):
        with weights_installed([(ref, second)]):
            assert torch.equal(ref.weight(), second)
        assert torch.equal(ref.weight(), first)
    assert torch.equal(ref.weight(), original)


def test_a_weight_of_the_wrong_shape_is_one_clear_error_and_changes_nothing() -> None:
    model = tiny_model("llama")
    refs = describe(model).linears
    original = refs[0].weight().clone()
    with pytest.raises(PvqError, match="expected"), weights_installed([(refs[0], torch.zeros(3, 3))]):
        pass
    assert torch.equal(refs[0].weight(), original)
