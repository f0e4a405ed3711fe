"""Output error through the Gram matrix equals the error computed on the inputs themselves."""

from __future__ import annotations

import math

import pytest
import torch
from method_toys import direct_output_error, random_layer

from measure.compress.methods import get_method
from measure.compress.methods.metrics import output_error, weight_sqnr_db
from theory.errors import PvqError


@pytest.mark.parametrize("name", ["magnitude", "rtn", "gptq", "sparsegpt", "nf4"])
def test_gram_output_error_equals_direct_error(name) -> None:
    weight, inputs, gram = random_layer(seed=4)
    params = {"sparsity": 0.5} if get_method(name).kind == "pruning" else {"bits": 3} if name != "nf4" else {}
    compressed = get_method(name).apply(weight, gram, params)
    relative, sqnr_db = output_error(weight, compressed, gram)
    direct = direct_output_error(weight, compressed, inputs)
    assert abs(relative - direct) <= 1e-9 * direct
    assert sqnr_db == pytest.approx(-10 * math.log10(direct), abs=1e-8)


def test_weight_sqnr_db_is_signal_over_noise_energy() -> None:
    weight, _, _ = random_layer(seed=4)
    noise = 0.1 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(1))
    expected = 10 * math.log10(float(weight.double().square().sum() / noise.double().square().sum()))
    assert weight_sqnr_db(weight, weight + noise) == pytest.approx(expected, abs=1e-4)


def test_exact_reconstruction_has_infinite_sqnr() -> None:
    weight, _, gram = random_layer(seed=4)
    assert output_error(weight, weight.clone(), gram) == (0.0, math.inf)
    assert weight_sqnr_db(weight, weight.clone()) == math.inf


def test_errors_reject_mismatched_or_degenerate_inputs() -> None:
    weight, _, gram = random_layer(seed=4)
    with pytest.raises(PvqError, match="shape"):
        output_error(weight, weight[:, :10], gram)
    with pytest.raises(PvqError, match="Gram matrix must be 128×128"):
        output_error(weight, weight, gram[:5, :5])
    with pytest.raises(PvqError, match="undefined"):
        output_error(weight, weight, torch.zeros_like(gram))
    with pytest.raises(PvqError, match="all zeros"):
        weight_sqnr_db(torch.zeros(3, 3), torch.ones(3, 3))
