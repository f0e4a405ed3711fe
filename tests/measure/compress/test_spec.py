"""Compression specs: parsing, scopes, in-place application on several families, size accounting, calibration."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from method_toys import direct_output_error
from tiny_inputs import token_batches
from tiny_models import linear_inputs, tiny_model

from measure.capture.statistics import capture
from measure.compress import spec as spec_module
from measure.compress.apply import apply_spec, model_size
from measure.compress.methods import get_method
from measure.compress.spec import parse_spec, parse_term_list
from measure.compress.term_kind import TermKind
from measure.models.architecture import describe
from measure.models.weight_grid import detect_tensor_grid, distinct_per_block
from theory.errors import PvqError


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {ref.name: ref.weight().clone() for ref in describe(model).linears}


def _other_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter that holds no block linear weight (embeddings, norms, biases, lm_head)."""
    linear = {ref.parameter_name for ref in describe(model).linears}
    return {name: p.detach().clone() for name, p in model.named_parameters() if name not in linear}


def _sequential_inputs(family: str, compressed: torch.nn.Module, block: int, batches) -> dict[str, torch.Tensor]:
    """Inputs (tokens × features, float64) of the non-expert linears of ``block`` in a fresh ``family`` model
    whose earlier blocks hold ``compressed``'s weights: what layer-sequential calibration shows that block."""
    model = tiny_model(family)
    for ref, done in zip(describe(model).linears, describe(compressed).linears, strict=True):
        if ref.block_index < block:
            ref.set_weight(done.weight())
    refs = [ref for ref in describe(model).blocks[block].linears if ref.expert_index is None]
    return linear_inputs(model, batches, refs)


# --- parsing -------------------------------------------------------------------------------------------------


def test_parse_examples_of_the_issue() -> None:
    (step,) = parse_spec("sparsegpt:0.5").steps
    assert (step.method.name, step.params["sparsity"], step.scope) == ("sparsegpt", 0.5, "all")
    (step,) = parse_spec("gptq:4:g128").steps
    assert (step.params["bits"], step.params["group"], step.params["symmetric"]) == (4, 128, True)
    (step,) = parse_spec("sparsegpt:0.5+gptq:4:g128").steps
    assert step.method.name == "sparsegpt+gptq"
    assert step.params["prune"]["sparsity"] == 0.5 and step.params["quantize"]["group"] == 128
    (step,) = parse_spec("rtn:3:channel@mlp").steps
    assert (step.params["bits"], step.params["group"], step.scope) == (3, "channel", "mlp")
    (step,) = parse_spec("sparsegpt:2:4").steps
    assert (step.params["nm"], step.params["sparsity"]) == ((2, 4), None)


def test_parse_flags_names_and_separate_scopes() -> None:
    (step,) = parse_spec("rtn:bits=3:asym:mse:g64").steps
    assert step.params == {"bits": 3, "group": 64, "symmetric": False, "clip": "mse"}
    first, second = parse_spec(" magnitude:0.5@attention + rtn:4@mlp ").steps
    assert (first.method.name, first.scope, second.method.name, second.scope) == (
        "magnitude", "attention", "rtn", "mlp",
    )  # fmt: skip
    (joint,) = parse_spec("wanda:0.5+rtn:4@expert").steps
    assert (joint.method.name, joint.scope, joint.text) == ("wanda+rtn", "expert", "wanda:0.5+rtn:4@expert")
    terms = parse_term_list("magnitude:0.5, gptq:4:g128,nf4")
    assert [step.text for step in terms] == ["magnitude:0.5", "gptq:4:g128", "nf4"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("fancy:4", r"unknown method 'fancy'; methods: magnitude, .*sparsegpt, .*gptq"),
        ("gptq:17", r"'gptq:17': parameter 'bits': must be an integer in 2..16, got '17'"),
        ("rtn:1", r"parameter 'bits': must be an integer in 2..16"),
        ("sparsegpt:1.5", r"parameter 'sparsity': must lie in \[0, 1\), got '1.5'"),
        ("magnitude:-0.1", r"parameter 'sparsity': must lie in \[0, 1\)"),
        ("rtn:4@head", r"unknown scope 'head'; choose one of all, attention, mlp, expert, router"),
        ("rtn:4:zz", r"token 'zz' is not a parameter of 'rtn'; its parameters: bits"),
        ("rtn:4:bits=3", r"parameter 'bits' is given twice"),
        ("rtn:4+gptq:4", r"'rtn:4' and 'gptq:4' both compress"),
        ("magnitude:0.5@attention+rtn:4", r"both compress attention"),
        ("", r"empty compression spec"),
        ("rtn:4++nf4", r"empty term"),
        ("rtn::4", r"empty parameter"),
    ],
)
def test_bad_specs_give_one_clear_error(spec: str, message: str) -> None:
    with pytest.raises(PvqError, match=message):
        parse_spec(spec)


def test_bad_term_lists() -> None:
    with pytest.raises(PvqError, match="listed twice"):
        parse_term_list("nf4,nf4")
    with pytest.raises(PvqError, match="must be one layer term"):
        parse_term_list("magnitude:0.5@attention+rtn:4@mlp")


def test_scopes_pick_sublayer_kinds() -> None:
    refs = describe(tiny_model("qwen2_moe")).blocks[0].linears
    covered = {scope: {r.role for r in refs if parse_spec(f"nf4@{scope}").steps[0].covers(r)} for scope in
               ("all", "attention", "mlp", "expert", "router")}  # fmt: skip
    experts = {"expert.gate", "expert.up", "expert.down"}
    shared = {"shared.gate", "shared.up", "shared.down"}
    assert covered["attention"] == {"q", "k", "v", "o"}
    assert covered["expert"] == experts
    assert covered["mlp"] == experts | shared
    assert covered["router"] == {"router", "shared_gate"}
    assert covered["all"] == covered["attention"] | covered["mlp"]
    assert parse_spec("nf4").steps[0].scope == "all"


# --- application ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "spec", "kinds"),
    [
        ("llama", "sparsegpt:0.5@mlp", {"mlp"}),
        ("gpt2", "gptq:4:channel@attention", {"attention"}),
        ("qwen2_moe", "wanda:0.5@expert+rtn:4@attention", {"expert", "attention"}),
    ],
)
def test_apply_spec_changes_exactly_the_scoped_layers(family: str, spec: str, kinds: set[str]) -> None:
    model = tiny_model(family)
    before, others = _weights(model), _other_parameters(model)
    report = apply_spec(model, spec, token_batches(3))
    after = _weights(model)
    for ref in describe(model).linears:
        changed = not torch.equal(before[ref.name], after[ref.name])
        assert changed == (ref.sublayer_kind in kinds), ref.name
    for name, value in _other_parameters(model).items():
        assert torch.equal(value, others[name]), name
    assert set(report.layers["layer"]) == {r.name for r in describe(model).linears if r.sublayer_kind in kinds}
    original = {ref.name: ref for ref in describe(tiny_model(family)).linears}
    for row in report.layers.itertuples():
        if row.sublayer == "expert":
            assert 0 < row.relative_error < 1
            continue
        inputs = _sequential_inputs(family, model, row.block, token_batches(3))[row.layer]
        direct = direct_output_error(original[row.layer].weight(), after[row.layer], inputs)
        assert row.relative_error == pytest.approx(direct, rel=1e-5), row.layer


def test_sparsity_and_grids_hold_in_the_model() -> None:
    model = tiny_model("llama")
    apply_spec(model, "sparsegpt:2:4@attention+magnitude:0.5@mlp", token_batches(3))
    arch = describe(model)
    for ref in arch.linears:
        weight = ref.weight()
        if ref.sublayer_kind == "attention":
            zeros_per_group = (weight.reshape(weight.shape[0], -1, 4) == 0).sum(dim=-1)
            assert (zeros_per_group >= 2).all(), ref.name
        else:
            assert (weight == 0).sum().item() == round(0.5 * weight.numel()), ref.name
    model = tiny_model("gpt2")
    apply_spec(model, "sparsegpt:0.5+gptq:3:g16@mlp+rtn:4:channel@attention", token_batches(3))
    for ref in describe(model).linears:
        weight = ref.weight()
        if ref.sublayer_kind == "mlp":
            assert distinct_per_block(weight, 16).max() <= 2**3, ref.name  # one 3-bit grid per group of 16
            assert (weight == 0).double().mean().item() >= 0.5, ref.name
        else:
            assert distinct_per_block(weight, weight.shape[1]).max() <= 2**4, ref.name  # 4-bit grid per row


def test_data_free_specs_need_no_calibration() -> None:
    model = tiny_model("llama")
    report = apply_spec(model, "nf4@attention+mxfp4@mlp")
    assert len(report.layers) == 14 and report.tokens == 0
    assert report.layers["relative_error"].isna().all()
    weight = describe(model).blocks[0].attention.linears[0].weight()
    assert detect_tensor_grid("q", weight).bits <= 4


def _unique_parameter_count(model: torch.nn.Module) -> int:
    seen: dict[int, int] = {}
    for _, parameter in model.named_parameters(remove_duplicate=False):
        seen[parameter.data_ptr()] = parameter.numel()
    return sum(seen.values())


@pytest.mark.parametrize("tied", [False, True])
def test_model_size_matches_hand_computation(tied: bool) -> None:
    model = tiny_model("llama", tie_word_embeddings=tied)
    size = model_size(model, "rtn:4:channel@mlp+magnitude:0.5@attention")
    total = _unique_parameter_count(model)
    hidden, inner, kv = 32, 64, 16
    blocks = 2
    attention_weights = blocks * (hidden * hidden * 2 + kv * hidden * 2)
    mlp_weights = blocks * 3 * hidden * inner
    scales = blocks * (2 * inner + hidden)  # one 16-bit scale per output channel of gate, up and down
    compressed_bits = attention_weights * 8 + mlp_weights * 4 + scales * 16
    bits = 16 * (total - attention_weights - mlp_weights) + compressed_bits
    assert size["parameters"] == total
    assert size["bits"] == bits
    assert size["bytes"] == bits / 8
    assert size["bits_per_weight"] == pytest.approx(bits / total)
    assert size["compressed_bits_per_weight"] == pytest.approx(compressed_bits / (attention_weights + mlp_weights))
    assert model_size(model, "nf4@router")["bits"] == 16 * total  # a dense model has no router


def test_model_size_of_moe_counts_experts_and_keeps_routers_at_16_bits() -> None:
    model = tiny_model("mixtral")
    arch = describe(model)
    experts = [r for r in arch.linears if r.sublayer_kind == "expert"]
    size = model_size(model, "rtn:8:tensor@expert")
    expert_weights = sum(r.out_features * r.in_features for r in experts)
    per_tensor_scales = 16 * len(experts)
    expected = 16 * (_unique_parameter_count(model) - expert_weights) + 8 * expert_weights + per_tensor_scales
    assert size["bits"] == pytest.approx(expected)


# --- calibration ---------------------------------------------------------------------------------------------


def _compressed_block_weight(calibration: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    model = tiny_model("llama", num_hidden_layers=3)
    report = apply_spec(model, "gptq:3:channel", token_batches(3), calibration=calibration)
    assert report.calibration == calibration == report.provenance()["calibration"]
    return model, _weights(model)


def test_sequential_and_parallel_calibration_follow_their_streams() -> None:
    sequential_model, sequential = _compressed_block_weight("sequential")
    _, parallel = _compressed_block_weight("parallel")
    arch = describe(sequential_model)
    first, second = arch.blocks[0].linears[0].name, arch.blocks[1].linears[0].name
    assert torch.equal(sequential[first], parallel[first])
    assert not torch.equal(sequential[second], parallel[second])
    method, params = get_method("gptq"), {"bits": 3, "group": "channel"}
    original = tiny_model("llama", num_hidden_layers=3)
    ref = describe(original).blocks[1].linears[0]
    original_gram = capture(original, token_batches(3), mode="sequential").gram_for(ref.name).gram
    torch.testing.assert_close(parallel[second], method.apply(ref.weight(), original_gram, params))
    for block_zero in describe(original).blocks[0].linears:
        block_zero.set_weight(sequential[block_zero.name])
    compressed_gram = capture(original, token_batches(3), mode="sequential").gram_for(ref.name).gram
    torch.testing.assert_close(sequential[second], method.apply(ref.weight(), compressed_gram, params))


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("spec", ["gptq:3:g16", "sparsegpt:0.5+gptq:4:g16", "remove:blocks=1+sparsegpt:0.5"])
def test_a_given_capture_replaces_the_first_parallel_pass(spec: str, workers: int) -> None:
    """Also with the layers shared among forked workers (same weights and rows as one process)."""
    reference, reused = tiny_model("llama", num_hidden_layers=3), tiny_model("llama", num_hidden_layers=3)
    captured = capture(reused, token_batches(3))
    report = apply_spec(reused, spec, token_batches(3), calibration="parallel", captured=captured, workers=workers)
    expected = apply_spec(reference, spec, token_batches(3), calibration="parallel")
    assert _weights(reused).keys() == _weights(reference).keys()
    for name, weight in _weights(reference).items():
        torch.testing.assert_close(_weights(reused)[name], weight, rtol=1e-5, atol=1e-6)
    assert report.layers["relative_error"].to_numpy() == pytest.approx(
        expected.layers["relative_error"].to_numpy(), rel=1e-4
    )


def test_a_capture_of_other_tokens_is_refused() -> None:
    model = tiny_model("llama")
    captured = capture(model, token_batches(3)[:1])
    with pytest.raises(PvqError, match="capture again"):
        apply_spec(model, "gptq:4:g16", token_batches(3), calibration="parallel", captured=captured)


# --- errors and extension ------------------------------------------------------------------------------------


def test_bad_application_inputs_are_clear_errors() -> None:
    model = tiny_model("llama")
    with pytest.raises(PvqError, match="unknown calibration 'sideways'"):
        apply_spec(model, "nf4", token_batches(3), calibration="sideways")
    with pytest.raises(PvqError, match="need calibration data"):
        apply_spec(model, "gptq:4", None)
    ref = describe(model).blocks[1].mlp.linears[2]
    with torch.no_grad():
        ref.module.weight[0, 0] = math.nan
    before = _weights(model)
    with pytest.raises(PvqError, match=f"layer {ref.name} has NaN or Inf weights"):
        apply_spec(model, "gptq:4", token_batches(3))
    after = _weights(model)
    assert all(torch.equal(before[n], after[n]) for n in before if n != ref.name)


def _double_norms(model: torch.nn.Module, params: dict[str, Any], batches: list, device: str) -> dict[str, Any]:
    arch = describe(model)
    with torch.no_grad():
        arch.final_norm.weight.mul_(params["factor"])
    return {"scaled": params["factor"]}


SCALE_TERM = TermKind("scale", "scale the final norm (test term)", lambda tokens: {"factor": float(tokens[0])},
                      _double_norms)  # fmt: skip


def test_model_level_terms_come_from_the_term_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(spec_module.TERM_KINDS, "scale", SCALE_TERM)
    model = tiny_model("llama")
    norm = describe(model).final_norm.weight.clone()
    spec = parse_spec("scale:2+rtn:8")
    assert [type(step).__name__ for step in spec.steps] == ["ModelStep", "LayerStep"]
    report = apply_spec(model, spec)
    assert report.model_steps == [{"term": "scale:2", "scaled": 2.0}]
    torch.testing.assert_close(describe(model).final_norm.weight, 2 * norm)
    assert len(report.layers) == 14
    with pytest.raises(PvqError, match="acts on the whole model and takes no scope"):
        parse_spec("scale:2@mlp")
    with pytest.raises(PvqError, match=r"model terms: .*scale"):
        parse_spec("sclae:2")
