"""The removal study's settings are checked against the model before any work: on every default model's shapes,
with impossible width options adapted or left out by the stated rule, and impossible settings refused in seconds
before any calibration data is read or any forward pass runs."""

from __future__ import annotations

import re
import time
from types import SimpleNamespace

import pytest
import torch
from default_shapes import DEFAULT_SHAPES, meta_default
from tiny_models import tiny_model, tiny_tokenizer

from figures.catalog.removal import SETTINGS, removal_study, study_settings
from figures.experiments import EXPERIMENTS
from figures.registry import load_catalog
from measure.compress.spec import check_spec_for_model
from measure.evaluation.perplexity import make_windows
from measure.models.architecture import describe
from measure.models.defaults import DEFAULT_MODELS
from measure.removal.study import StudySettings, check_for_model, run_study
from measure.removal.width_options import ADAPTED, AS_REQUESTED, LEFT_OUT, adapt_width_option, feasible_count
from theory.errors import PvqError

DEFAULT_WIDTHS = {
    "smollm2-135m": {"heads=0.34": AS_REQUESTED, "mlp=0.25:score=wanda": AS_REQUESTED},
    "gemma3-270m": {"heads=0.34": LEFT_OUT, "mlp=0.25:score=wanda": AS_REQUESTED},
    "qwen2.5-0.5b": {"heads=0.34": AS_REQUESTED, "mlp=0.25:score=wanda": AS_REQUESTED},
}
"""How each default takes the default study's width options: 1 of 3 and 1 of 2 KV groups, and Gemma-3-270M's
single KV group, of which none can go."""


def test_every_default_has_a_shape_and_an_expected_width_outcome() -> None:
    assert set(DEFAULT_SHAPES) == set(DEFAULT_MODELS) == set(DEFAULT_WIDTHS)
    for name, default in DEFAULT_MODELS.items():
        arch = describe(meta_default(name))
        assert (len(arch.blocks), arch.family) == (default.num_blocks, default.architecture)


@pytest.mark.parametrize("name", sorted(DEFAULT_MODELS))
def test_the_default_study_settings_pass_the_check_on_every_default_in_seconds(name: str) -> None:
    model = meta_default(name)
    start = time.perf_counter()
    widths = check_for_model(study_settings(SETTINGS), model)
    assert time.perf_counter() - start < 10
    assert dict(zip(widths["option"], widths["status"], strict=True)) == DEFAULT_WIDTHS[name]
    kept = widths[widths["status"] != LEFT_OUT]
    assert (kept["measured_option"] == kept["option"]).all() and (kept["reason"] == "").all()


def test_gemma3_270m_keeps_its_per_head_qk_norms_and_its_kv_group_is_left_out_with_the_reason() -> None:
    model = meta_default("gemma3-270m")
    attention = model.model.layers[0].self_attn
    assert attention.k_proj.weight.shape[0] == attention.k_norm.weight.shape[0] == 256
    row = adapt_width_option(model, "heads=0.34")
    assert (row["status"], row["measured_option"]) == (LEFT_OUT, "")
    assert row["reason"] == ("heads=0.34 removes whole KV groups, and the model has 1 of them: none can go with "
                             "one left")
    query = adapt_width_option(model, "heads=0.34:unit=query")
    assert (query["status"], query["measured_option"]) == (AS_REQUESTED, "heads=0.34:unit=query")


@pytest.mark.parametrize(("fraction", "total", "count"), [
    (0.34, 3, 1), (0.67, 3, 2), (0.1, 3, 1), (0.9, 3, 2), (0.34, 2, 1), (0.9, 2, 1), (0.5, 1, None),
    (0.25, 1536, 384),
])  # fmt: skip
def test_the_feasible_count_is_the_rounded_count_moved_into_one_to_all_but_one(
    fraction: float, total: int, count: int | None
) -> None:
    assert feasible_count(fraction, total) == count


@pytest.mark.parametrize(("family", "option", "status", "measured", "reason"), [
    ("llama", "heads=0.5:norefit", AS_REQUESTED, "heads=0.5:norefit", ""),
    ("llama", "heads=0.1", ADAPTED, "heads=0.5", r"removes round\(0.1 · 2\) = 0 of 2 KV groups; .* 1, is removed"),
    ("llama", "heads=0.9:unit=query", ADAPTED, "heads=0.5:unit=query", "= 2 of 2 query heads per KV group"),
    ("llama", "mlp=0.001", ADAPTED, "mlp=0.015625", r"round\(0.001 · 64\) = 0 of 64 channels of the narrowest"),
    ("gpt2", "heads=0.5", LEFT_OUT, "", "cannot remove heads of gpt2 block 0 attention"),
    ("olmo2", "heads=0.5", LEFT_OUT, "", "olmo2 attention normalizes q or k over all heads"),
    ("olmo2", "mlp=0.5", AS_REQUESTED, "mlp=0.5", ""),
])  # fmt: skip
def test_a_width_option_is_measured_adapted_or_left_out_by_the_stated_rule(
    family: str, option: str, status: str, measured: str, reason: str
) -> None:
    row = adapt_width_option(tiny_model(family), option)
    assert (row["option"], row["status"], row["measured_option"]) == (option, status, measured)
    if reason:
        assert re.search(reason, row["reason"]), row["reason"]
    else:
        assert row["reason"] == ""


def test_a_width_option_no_model_takes_is_one_clear_error() -> None:
    with pytest.raises(PvqError, match=r"unknown shrink token 'depth=0\.5'"):
        adapt_width_option(tiny_model("llama"), "depth=0.5")


def _forward_forbidden(model: torch.nn.Module) -> None:
    def refuse(module: torch.nn.Module, args: object) -> None:
        raise AssertionError("no forward pass may run before the settings are checked")

    model.register_forward_pre_hook(refuse)


@pytest.mark.parametrize(("change", "message"), [
    ({"max_removed": 18}, r"max_removed must lie in 1\.\.17 \(the model has 18 blocks\)"),
    ({"views": ["block", "residual"]}, "unknown view 'residual'"),
    ({"quantizer_bits": {"rtn": [1], "gptq": [4]}}, "bits must be an integer in 2..16"),
    ({"orderings": ["bi", "attn"]}, "removes sublayers"),
    ({"widths": ["heads=0.34:depth=2"]}, "unknown shrink token 'depth=2'"),
])  # fmt: skip
def test_an_impossible_setting_fails_in_seconds_before_calibration_or_any_forward_pass(
    change: dict, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_data(*args: object) -> None:
        raise AssertionError("the settings are checked before any calibration or evaluation data is read")

    monkeypatch.setattr("figures.catalog.removal.calibration", no_data)
    monkeypatch.setattr("figures.catalog.removal.evaluation_windows", no_data)
    model = meta_default("gemma3-270m")
    _forward_forbidden(model)
    config = dict(EXPERIMENTS["removal_study"].config)
    config["settings"] = {**config["settings"], **change}
    context = SimpleNamespace(model=SimpleNamespace(model=model), step=lambda text: None)
    start = time.perf_counter()
    with pytest.raises(PvqError, match=message):
        removal_study(config, context)
    assert time.perf_counter() - start < 10


def test_probe_windows_beyond_the_evaluation_windows_are_refused_before_any_forward_pass() -> None:
    model = tiny_model("llama")
    _forward_forbidden(model)
    windows = make_windows("some held-out text " * 20, tiny_tokenizer(), 32, max_windows=2)
    with pytest.raises(PvqError, match="probe_windows 4 exceeds the 2 evaluation windows"):
        run_study(model, [], windows, StudySettings(max_removed=1, probe_windows=4))


def test_a_study_on_a_model_with_one_kv_group_runs_and_records_the_option_it_left_out() -> None:
    model = tiny_model("gemma3", num_attention_heads=4, num_key_value_heads=1, head_dim=8)
    settings = StudySettings(max_removed=1, orderings=("bi",), probe_windows=1, sublayers=False,
                             quantizers=("rtn",), groups=("channel",), quantizer_bits={"rtn": (4,)},
                             pruners=("magnitude",), pruner_sparsities=(0.5,), mask_conventions=("free",),
                             views=("block", "end_to_end"), widths=("heads=0.34", "mlp=0.25"),
                             workers=1)  # fmt: skip
    batches = list(torch.randint(3, 300, (2, 24), generator=torch.Generator().manual_seed(1)).split(1))
    windows = make_windows("some held-out text " * 20, tiny_tokenizer(), 32, max_windows=1)
    study = run_study(model, batches, windows, settings)
    widths = study.tables["width_options"].set_index("option")
    assert widths.loc["heads=0.34", "status"] == LEFT_OUT and widths.loc["mlp=0.25", "status"] == AS_REQUESTED
    terms = set(study.tables["points"].query("family == 'width'")["term"])
    assert terms == {"shrink:mlp=0.25"}


def test_the_width_comparison_reports_an_option_left_out_before_calibration_and_measures_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from figures.catalog import width as width_catalog

    calls: list = []
    monkeypatch.setattr(width_catalog, "calibration", lambda loaded, config: calls.append("calibration") or [])
    monkeypatch.setattr(width_catalog, "evaluation_windows", lambda loaded, config: None)
    monkeypatch.setattr(width_catalog, "width_pruning_grid",
                        lambda model, batches, windows, options, *args, **kwargs: calls.append(list(options)))
    model = tiny_model("gemma3", num_attention_heads=4, num_key_value_heads=1, head_dim=8)
    config = {**EXPERIMENTS["width_pruning"].config, "options": ["mlp=0.1", "heads=0.34", "heads=0.67"]}
    width_catalog.width_pruning(config, SimpleNamespace(model=SimpleNamespace(model=model), step=calls.append))
    reason = "removes whole KV groups, and the model has 1 of them: none can go with one left"
    assert calls == [f"width option heads=0.34: left out (heads=0.34 {reason})",
                     f"width option heads=0.67: left out (heads=0.67 {reason})", "calibration", ["mlp=0.1"]]


@pytest.mark.parametrize(("spec", "message"), [
    ("remove:bi:18", r"spec term 'remove:bi:18': remove:bi removes 1\.\.17 units of a model of 18 blocks"),
    ("gptq:4:g128+remove:blocks=3,18", "block block index 18 is out of range: the model has blocks 0..17"),
    ("remove:mlp:19", r"remove:mlp removes 1\.\.18 units"),
    ("shrink:heads=0.34", r"removing 0\.34 of 1 KV groups removes none"),
    ("shrink:heads=0.5:unit=query+rtn:4:g128", ""),
    ("remove:bi:17+gptq:3:g128", ""),
])  # fmt: skip
def test_a_spec_is_checked_against_the_model_before_any_data(spec: str, message: str) -> None:
    model = meta_default("gemma3-270m")
    _forward_forbidden(model)
    if message:
        with pytest.raises(PvqError, match=message):
            check_spec_for_model(spec, model)
    else:
        assert check_spec_for_model(spec, model).text == spec


@pytest.mark.parametrize("name", sorted(DEFAULT_MODELS))
def test_every_default_model_experiment_spec_passes_the_check_on_every_default(name: str) -> None:
    load_catalog()
    model = meta_default(name)
    specs = [spec for experiment in ("compression_frontier", "joint_frontier")
             for spec in EXPERIMENTS[experiment].config["specs"]]  # fmt: skip
    specs += [spec for spec in EXPERIMENTS["compression_benchmarks"].config["variants"] if spec]
    assert len(specs) > 30
    for spec in specs:
        check_spec_for_model(spec, model)
