"""Width pruning on every tiny family: reloads with identical logits, counts its parameters, refits never hurt."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_inputs import token_batches
from tiny_models import TINY_FAMILIES, linear_inputs, tiny_model

from measure.compress.shrink.shrink import (
    RECORD_FILE,
    ShrinkSettings,
    plan_shrink,
    save_shrunk,
    shrink_model,
    zeroed_weights,
)
from measure.compress.shrink.units import channel_units, head_units
from measure.models.architecture import describe, parameter_counts
from theory.errors import PvqError

HEADS_INEXPRESSIBLE = {"gpt2", "gpt_neox", "falcon", "opt", "olmoe"}
"""Families whose config cannot describe fewer heads (head_dim or a q/k norm derived from hidden_size / heads)."""


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def _settings(family: str, **overrides: object) -> ShrinkSettings:
    heads = 0.0 if family in HEADS_INEXPRESSIBLE else 0.5
    return ShrinkSettings(**{"mlp": 0.25, "heads": heads, **overrides})


def _parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_shrunk_model_reloads_with_identical_logits_and_counts_its_parameters(family: str, tmp_path) -> None:
    model = tiny_model(family)
    original = _parameters(model)
    result = shrink_model(model, token_batches(1), _settings(family))
    save_shrunk(result, tmp_path / "shrunk")
    reloaded = type(result.model).from_pretrained(tmp_path / "shrunk").eval()
    ids = token_batches(1)[0]
    torch.testing.assert_close(_logits(reloaded, ids), _logits(result.model, ids), rtol=0, atol=1e-6)
    assert _parameters(reloaded) == original - result.removed_parameters
    decoder = parameter_counts(describe(reloaded))["decoder"]
    assert decoder == result.decoder_parameters - result.removed_parameters
    assert result.removed_parameters > 0
    text = reloaded.config.get_text_config()
    for key, value in result.config_changes.items():
        assert getattr(text, key) == value
    widths = {unit.width for unit in channel_units(describe(reloaded))}
    assert widths == {round(unit.width * 0.75) for unit in channel_units(describe(tiny_model(family)))}
    assert json.loads((tmp_path / "shrunk" / RECORD_FILE).read_text())["removed_parameters"] > 0


@pytest.mark.parametrize("family", ["llama", "gpt2", "mixtral"])
def test_removing_nothing_gives_back_the_original_model(family: str) -> None:
    ids = token_batches(1)[0]
    expected = _logits(tiny_model(family), ids)
    result = shrink_model(tiny_model(family), token_batches(1), ShrinkSettings())
    torch.testing.assert_close(_logits(result.model, ids), expected, rtol=0, atol=0)
    assert result.removed_parameters == 0 and result.config_changes == {}


def _consumer_errors(family: str, refit: bool, score: str = "output") -> dict[str, float]:
    """‖X_K Ŵ_Kᵀ − X Wᵀ‖²_F of every dense consumer, X its inputs captured on the original model."""
    original = tiny_model(family)
    arch = describe(original)
    consumers = [u.consumer for u in channel_units(arch) if u.expert is None]
    if family not in HEADS_INEXPRESSIBLE:
        consumers += [u.o for u in head_units(arch)]
    inputs = linear_inputs(original, token_batches(1), consumers)
    weights = {ref.name: ref.weight().double().clone() for ref in consumers}
    result = shrink_model(tiny_model(family), token_batches(1), _settings(family, refit=refit, score=score))
    shrunk = {ref.name: ref for ref in describe(result.model).linears}
    errors = {}
    for name, x in inputs.items():
        kept = _kept_columns(result, name, shrunk[name].in_features, x.shape[1])
        output = x[:, kept] @ shrunk[name].weight().double().T
        errors[name] = float(((output - x @ weights[name].T) ** 2).sum())
    return errors


def _kept_columns(result, consumer: str, kept_width: int, width: int) -> torch.Tensor:
    unit = consumer.rpartition(".")[0]
    kept = torch.tensor(result.kept[unit])
    if kept.numel() == kept_width:
        return kept
    head_dim = width // (result.units.set_index("unit").loc[unit, "width"])
    return (kept[:, None] * head_dim + torch.arange(head_dim)[None, :]).flatten()


@pytest.mark.parametrize("family", [f for f in TINY_FAMILIES if f != "olmoe"])
def test_refit_never_increases_the_consumers_output_error(family: str) -> None:
    """Dense MLP and attention consumers (OLMoE has neither: routed experts only, heads not expressible)."""
    refit, unchanged = _consumer_errors(family, True), _consumer_errors(family, False)
    assert refit.keys() == unchanged.keys() and refit
    for name in refit:
        assert refit[name] <= unchanged[name] * (1 + 1e-9) + 1e-9, name
    assert sum(refit.values()) < sum(unchanged.values())


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "olmoe", "gpt_oss"])
def test_refit_never_increases_a_routed_experts_output_error_on_its_router_weighted_gram(family: str) -> None:
    units = shrink_model(tiny_model(family), token_batches(1), ShrinkSettings(mlp=0.25)).units
    experts = units[units["kind"] == "expert"]
    assert len(experts) == 2 * 4
    assert (experts["refit_error"] <= experts["unrefit_error"] * (1 + 1e-9)).all()


def test_query_head_removal_keeps_every_kv_group() -> None:
    model = tiny_model("llama", num_attention_heads=4, num_key_value_heads=1)
    ids = token_batches(1)[0]
    result = shrink_model(model, token_batches(1), ShrinkSettings(heads=0.5, head_unit="query"))
    config = result.model.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, 1, 8)
    assert _logits(result.model, ids).shape == (2, 16, 320)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (ShrinkSettings(mlp=1.0), r"fraction removed, a number in \[0, 1\)"),
        (ShrinkSettings(mlp=-0.1), r"fraction removed, a number in \[0, 1\)"),
        (ShrinkSettings(heads=0.9), "leaves none"),
        (ShrinkSettings(mlp=0.5, score="nope"), "unknown score 'nope'"),
    ],
)
def test_bad_settings_are_one_clear_error(settings: ShrinkSettings, message: str) -> None:
    with pytest.raises(PvqError, match=message):
        shrink_model(tiny_model("llama"), token_batches(1), settings)


@pytest.mark.parametrize("family", ["gpt2", "olmoe"])
def test_heads_of_a_family_whose_config_cannot_hold_them_are_refused(family: str) -> None:
    with pytest.raises(PvqError, match=family):
        shrink_model(tiny_model(family), token_batches(1), ShrinkSettings(heads=0.5))


@pytest.mark.parametrize(
    ("family", "head_unit"),
    [("llama", "kv"), ("llama", "query"), ("gemma3", "kv"), ("phi", "query"), ("gpt_oss", "kv"), ("gpt2", "kv")],
)
def test_shrinking_without_refit_equals_zeroing_the_removed_consumer_columns(family: str, head_unit: str) -> None:
    heads = 0.0 if family in HEADS_INEXPRESSIBLE else 0.5
    settings = ShrinkSettings(mlp=0.25, heads=heads, refit=False, head_unit=head_unit)
    result = shrink_model(tiny_model(family), token_batches(1), settings)
    masked = tiny_model(family)
    arch = describe(masked)
    for unit in channel_units(arch):
        _zero_columns(unit.consumer, [c for c in range(unit.width) if c not in result.kept[unit.name]])
    for unit in head_units(arch) if heads else []:
        gone = [h for h in range(unit.heads) if h not in result.kept[unit.name]]
        _zero_columns(unit.o, [h * unit.head_dim + i for h in gone for i in range(unit.head_dim)])
    ids = token_batches(1)[0]
    torch.testing.assert_close(_logits(result.model, ids), _logits(masked, ids), rtol=1e-5, atol=1e-5)


def _zero_columns(ref, columns: list[int]) -> None:
    weight = ref.weight().clone()
    weight[:, columns] = 0
    ref.set_weight(weight)


def _hidden_states(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        output = model(ids, use_cache=False, output_hidden_states=True)
    return (*output.hidden_states, output.logits)


@pytest.mark.parametrize(
    ("family", "head_unit", "refit"),
    [("llama", "kv", True), ("llama", "query", False), ("qwen2", "kv", True), ("gemma3", "kv", False),
     ("olmo2", "kv", True), ("phi", "kv", True), ("gpt2", "kv", True), ("mixtral", "kv", True),
     ("gpt_oss", "kv", False)],
)  # fmt: skip
def test_zeroed_same_shape_weights_give_every_block_output_of_the_physically_shrunk_model(
    family: str, head_unit: str, refit: bool
) -> None:
    heads = 0.0 if family in HEADS_INEXPRESSIBLE | {"olmo2"} else 0.5
    settings = ShrinkSettings(mlp=0.25, heads=heads, refit=refit, head_unit=head_unit)
    model = tiny_model(family)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    plan = plan_shrink(model, token_batches(1), settings)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), f"plan_shrink changed {name}"
    zeroed = zeroed_weights(plan)
    assert {ref.name for ref, _, _ in plan.kept_features} == set(zeroed)
    for ref, _, _ in plan.kept_features:
        assert zeroed[ref.name].shape == ref.weight().shape
        ref.set_weight(zeroed[ref.name])
    shrunk = shrink_model(tiny_model(family), token_batches(1), settings)
    assert shrunk.kept == plan.kept and shrunk.removed_parameters == plan.removed_parameters
    ids = token_batches(1)[0]
    for same_shape, physical in zip(_hidden_states(model, ids), _hidden_states(shrunk.model, ids), strict=True):
        torch.testing.assert_close(same_shape, physical, rtol=1e-5, atol=1e-5)


def test_zeroed_weights_zero_exactly_the_removed_rows_and_columns_and_keep_the_refit() -> None:
    model = tiny_model("llama")
    plan = plan_shrink(model, token_batches(1), ShrinkSettings(mlp=0.25, heads=0.5))
    zeroed = zeroed_weights(plan)
    arch = describe(model)
    for unit in channel_units(arch):
        gone = [c for c in range(unit.width) if c not in plan.kept[unit.name]]
        assert len(gone) == round(0.25 * unit.width)
        for ref in unit.producers:
            assert zeroed[ref.name][gone].abs().sum() == 0
            kept = plan.kept[unit.name]
            torch.testing.assert_close(zeroed[ref.name][kept], ref.weight()[kept], rtol=0, atol=0)
        consumer = zeroed[unit.consumer.name]
        assert consumer[:, gone].abs().sum() == 0
        torch.testing.assert_close(consumer, plan.consumer_weights[unit.consumer.name].float(), rtol=0, atol=0)
    for unit in head_units(arch):
        gone_kv = [k for k in range(unit.kv_heads) if k * unit.group_size not in plan.kept[unit.name]]
        assert len(gone_kv) == 1
        rows = [k * unit.head_dim + i for k in gone_kv for i in range(unit.head_dim)]
        assert zeroed[unit.k.name][rows].abs().sum() == 0 and zeroed[unit.v.name][rows].abs().sum() == 0


def test_per_block_widths_a_config_cannot_hold_are_one_error_naming_the_family_and_the_uniform_mode() -> None:
    model = tiny_model("llama")
    with pytest.raises(PvqError, match=r"llama config holds one mlp width.*uniform mode"):
        plan_shrink(model, token_batches(1), ShrinkSettings(mlp=(0.25, 0.5)))
    with pytest.raises(PvqError, match="one fraction per block: the model has 2 blocks, got 3"):
        plan_shrink(model, token_batches(1), ShrinkSettings(mlp=(0.25, 0.5, 0.5)))
    with pytest.raises(PvqError, match="fraction removed"):
        plan_shrink(model, token_batches(1), ShrinkSettings(mlp=(0.25, 1.5)))
    uniform = shrink_model(model, token_batches(1), ShrinkSettings(mlp=(0.25, 0.25)))
    assert uniform.config_changes == {"intermediate_size": 48}


def test_heads_under_a_norm_over_the_whole_projection_have_no_same_shape_form() -> None:
    plan = plan_shrink(tiny_model("olmo2"), token_batches(1), ShrinkSettings(heads=0.5))
    with pytest.raises(PvqError, match=r"olmo2 attention normalizes q or k over all heads .*q_norm"):
        zeroed_weights(plan)
    assert set(zeroed_weights(plan_shrink(tiny_model("olmo2"), token_batches(1), ShrinkSettings(mlp=0.5))))


def _gemma3_270m_shaped() -> torch.nn.Module:
    """A tiny Gemma-3 with Gemma-3-270M's attention layout: 4 query heads, one KV head, per-head q/k norms (the k
    projection is exactly head_dim wide)."""
    return tiny_model("gemma3", num_attention_heads=4, num_key_value_heads=1, head_dim=8)


def test_per_head_qk_norms_with_a_single_kv_head_are_kept_whole_and_its_heads_have_a_same_shape_form() -> None:
    model = _gemma3_270m_shaped()
    attention = model.model.layers[0].self_attn
    assert attention.k_norm.weight.shape == attention.k_proj.weight.shape[:1] == (8,)
    assert all(unit.extras == {} for unit in head_units(describe(model)))
    settings = ShrinkSettings(heads=0.5, head_unit="query")
    plan = plan_shrink(model, token_batches(1), settings)
    assert plan.projection_norms == ()
    for ref, _, _ in plan.kept_features:
        ref.set_weight(zeroed_weights(plan)[ref.name])
    shrunk = shrink_model(_gemma3_270m_shaped(), token_batches(1), settings)
    config = shrunk.model.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, 1, 8)
    assert shrunk.model.model.layers[0].self_attn.k_norm.weight.shape == (8,)
    ids = token_batches(1)[0]
    for same_shape, physical in zip(_hidden_states(model, ids), _hidden_states(shrunk.model, ids), strict=True):
        torch.testing.assert_close(same_shape, physical, rtol=1e-5, atol=1e-5)


def test_a_head_fraction_that_removes_every_or_no_kv_group_is_refused_before_any_capture(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_capture(*args: object, **kwargs: object) -> None:
        raise AssertionError("the counts are checked before any capture")

    monkeypatch.setattr("measure.compress.shrink.shrink.consumer_grams", no_capture)
    with pytest.raises(PvqError, match=r"removing 0.9 of 1 KV groups leaves none; at most 0 can go"):
        plan_shrink(_gemma3_270m_shaped(), token_batches(1), ShrinkSettings(heads=0.9))
    with pytest.raises(PvqError, match=r"removing 0.34 of 1 KV groups removes none \(round\(0.34 · 1\) = 0\)"):
        plan_shrink(_gemma3_270m_shaped(), token_batches(1), ShrinkSettings(heads=0.34))


def test_a_q_norm_over_the_whole_projection_is_refused_even_with_a_single_kv_head() -> None:
    model = tiny_model("olmo2", num_attention_heads=4, num_key_value_heads=1)
    unit = head_units(describe(model))[0]
    assert unit.head_dim == 8 and unit.extras == {"model.layers.0.self_attn.q_norm.weight": "q"}
    plan = plan_shrink(model, token_batches(1), ShrinkSettings(heads=0.5, head_unit="query"))
    assert plan.projection_norms == tuple(f"model.layers.{b}.self_attn.q_norm.weight" for b in (0, 1))
    with pytest.raises(PvqError, match=r"olmo2 attention normalizes q or k over all heads \(model.layers.0"):
        zeroed_weights(plan)
