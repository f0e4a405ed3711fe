"""AWQ: never worse than RTN on the Gram it searches, RTN at α = 0, exact Gram errors, and the spec grammar."""

from __future__ import annotations

import pytest
import torch
from method_toys import direct_output_error, random_layer
from tiny_inputs import token_batches
from tiny_models import tiny_model

from measure.compress.apply import apply_spec
from measure.compress.methods import get_method
from measure.compress.methods.awq import ALPHAS, awq_quantize_at, awq_scales, channel_rms, search_alpha
from measure.compress.methods.metrics import output_error
from measure.compress.methods.quantization import rtn_quantize
from measure.compress.methods.uniform import grouped
from measure.compress.spec import parse_spec
from measure.ledger import build_ledger
from measure.models.architecture import describe
from theory.errors import PvqError

GRID = {"bits": 3, "group": 16, "symmetric": True, "clip": "minmax"}


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2_moe"])
@pytest.mark.parametrize("bits", [3, 4])
def test_awq_output_error_is_at_most_rtns_on_every_layer_of_tiny_models(family: str, bits: int) -> None:
    methods = f"rtn:{bits}:g16,awq:{bits}:g16"
    table = build_ledger(tiny_model(family), token_batches(5), methods).table
    wide = table.pivot(index="layer", columns="method", values="relative_error")
    assert len(wide) == table["layer"].nunique() and len(wide) >= 8
    assert (wide["awq"] <= wide["rtn"]).all(), wide[wide["awq"] > wide["rtn"]]


def test_awq_beats_rtn_on_a_layer_with_outlier_input_channels() -> None:
    weight, inputs, gram = random_layer()
    rtn = rtn_quantize(weight.double(), **GRID)
    awq = get_method("awq").apply(weight.double(), gram, GRID)
    assert direct_output_error(weight, awq, inputs) < 0.9 * direct_output_error(weight, rtn, inputs)


def test_alpha_zero_is_rtn_bit_for_bit() -> None:
    weight, _, gram = random_layer(seed=1)
    scales = awq_scales(channel_rms(gram), 0.0)
    assert torch.equal(scales, torch.ones_like(scales))
    assert torch.equal(awq_quantize_at(weight.double(), scales, **GRID), rtn_quantize(weight.double(), **GRID))


def test_equal_channel_energies_make_awq_exactly_rtn() -> None:
    weight, _, _ = random_layer(seed=2)
    gram = 7.0 * torch.eye(weight.shape[1], dtype=torch.float64)
    for params in (GRID, {**GRID, "bits": 4, "group": "channel", "symmetric": False, "clip": "mse"}):
        rtn = get_method("rtn").apply(weight, None, params)
        assert torch.equal(get_method("awq").apply(weight, gram, params), rtn)


def test_gram_error_equals_the_direct_output_error_and_the_search_finds_the_grid_minimum() -> None:
    """On the asymmetric grid: the symmetric one puts a group's negative absmax on a rounding tie, which the
    ulp-level difference between scales from the Gram and from the inputs may break either way."""
    weight, inputs, gram = random_layer(seed=3)
    grid = {**GRID, "symmetric": False}
    alpha, awq = search_alpha(weight.double(), gram, **grid)
    assert output_error(weight, awq, gram)[0] == pytest.approx(direct_output_error(weight, awq, inputs), rel=1e-10)
    rms = torch.sqrt((inputs**2).mean(dim=0))
    direct = [direct_output_error(weight, awq_quantize_at(weight.double(), awq_scales(rms, a), **grid), inputs)
              for a in ALPHAS.tolist()]  # fmt: skip
    assert direct_output_error(weight, awq, inputs) == pytest.approx(min(direct), rel=1e-9)
    assert alpha == pytest.approx(ALPHAS[direct.index(min(direct))].item()) and alpha > 0


def test_the_scaled_weight_sits_on_a_b_bit_grid_per_group() -> None:
    weight, _, gram = random_layer(seed=4)
    alpha, awq = search_alpha(weight.double(), gram, **GRID)
    scaled = awq * awq_scales(channel_rms(gram), alpha)[None, :]
    groups, _ = grouped(scaled, GRID["group"])
    levels = max(torch.unique(group.round(decimals=9)).numel() for group in groups.reshape(-1, 16))
    assert levels <= 2 ** GRID["bits"]


def test_pruned_zeros_stay_zero_and_awq_needs_the_gram() -> None:
    weight, _, gram = random_layer(seed=5)
    pruned = get_method("magnitude").apply(weight, None, {"sparsity": 0.5})
    quantized = get_method("awq").apply(pruned, gram, GRID)
    assert torch.equal(quantized[pruned == 0], torch.zeros(int((pruned == 0).sum())))
    with pytest.raises(PvqError, match="needs the Gram"):
        get_method("awq").apply(weight)


def test_awq_spec_round_trips_like_rtn_and_costs_the_same_bits() -> None:
    awq, rtn = parse_spec("awq:4:g128").steps[0], parse_spec("rtn:4:g128").steps[0]
    assert awq.method.name == "awq" and awq.params == rtn.params
    assert awq.params == get_method("awq").resolve({"bits": 4, "group": 128})
    scoped = parse_spec(parse_spec("awq:3:g64:asym@mlp").text).steps[0]
    assert scoped.params == {**GRID, "group": 64, "symmetric": False} and scoped.scope == "mlp"
    for shape in ((576, 576), (1536, 576), (64, 100)):
        assert awq.method.bits_per_weight(awq.params, shape) == rtn.method.bits_per_weight(rtn.params, shape)
    joint = parse_spec("sparsegpt:0.5+awq:4:g128").steps[0]
    assert joint.method.name == "sparsegpt+awq" and joint.params["quantize"] == awq.params


def test_awq_spec_compresses_a_tiny_model_and_reports_rtns_size() -> None:
    model = tiny_model("llama")
    report = apply_spec(model, "awq:4:g16", token_batches(5))
    assert set(report.layers["method"]) == {"awq"} and len(report.layers) == len(describe(model).linears)
    assert report.size == apply_spec(tiny_model("llama"), "rtn:4:g16").size
