"""Hybrid decoders (short convolution, gated delta-net, Mamba / Mamba2, side-by-side mixers) walked, measured,
removed and reloaded like attention decoders."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_inputs import token_ids
from tiny_models import HYBRID_FAMILIES, save_tiny_model, tiny_model
from transformers import AutoModelForCausalLM

from measure.capture.statistics import capture
from measure.compress.importance import influence, measure_importance
from measure.compress.remove import remove_blocks, remove_sublayers, save_removed
from measure.compress.shrink.shrink import ShrinkSettings, plan_shrink, save_shrunk, shrink_model
from measure.ledger import build_ledger
from measure.models import families
from measure.models.architecture import describe, parameter_counts, unquantized_parameters
from pvq.cli import main
from theory.errors import PvqError

BLOCK_KINDS = {
    "lfm2": [("short_conv", "mlp"), ("attention", "mlp")] * 2,
    "qwen3_next": [("linear_attention", "moe"), ("attention", "moe")] * 2,
    "granitemoehybrid": [("mamba", "mlp"), ("attention", "mlp")] * 2,
    "falcon_h1": [("mamba", "attention", "mlp")] * 4,
    "jamba": [("mamba", "mlp"), ("attention", "moe")] * 2,
    "mamba2": [("mamba",)] * 4,
    "bamba": [("mamba", "mlp"), ("attention", "mlp")] * 2,
    "nemotron_h": [("mamba",), ("mlp",), ("attention",), ("mlp",)],
}
"""The kinds each tiny hybrid's config asks for (layer_types, attn_layer_period/offset, attn_layer_indices,
layers_block_type)."""
ACCEPTANCE_FAMILIES = ("lfm2", "qwen3_next", "granitemoehybrid", "falcon_h1")


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(token_ids(3, rows=2, length=12), use_cache=False).logits


@pytest.mark.parametrize("family", HYBRID_FAMILIES)
def test_blocks_hold_the_kinds_the_config_asks_for(family: str) -> None:
    assert [block.kinds for block in describe(tiny_model(family)).blocks] == BLOCK_KINDS[family]


@pytest.mark.parametrize("family", HYBRID_FAMILIES)
def test_every_linear_has_a_table_role_and_every_other_parameter_stays_at_16_bits(family: str) -> None:
    arch = describe(tiny_model(family))
    tables = {**families.MIXER_ROLES, "mlp": families.MLP_ROLES}
    for block in arch.blocks:
        for sublayer in block.mixers:
            for ref in sublayer.linears:
                assert ref.role == tables[sublayer.operator][ref.name.rpartition(".")[2]], ref.name
    linear = sum(ref.parameter_count for ref in arch.linears)
    assert linear + unquantized_parameters(arch) == parameter_counts(arch)["decoder"]
    convolutions = [m for block in arch.blocks for m in block.module.modules() if isinstance(m, torch.nn.Conv1d)]
    assert unquantized_parameters(arch) >= sum(p.numel() for m in convolutions for p in m.parameters())


@pytest.mark.parametrize("family", HYBRID_FAMILIES)
def test_block_influence_equals_cosine_of_hidden_states(family: str) -> None:
    """BI_i = 1 − E_t cos(x_i, x_{i+1}) from the capture vs the model's own hidden states (blocks before the last,
    whose output hidden_states reports after the final norm)."""
    model = tiny_model(family)
    importance = measure_importance(model, [token_ids(3, rows=2, length=12)])
    with torch.no_grad():
        states = model(token_ids(3, rows=2, length=12), output_hidden_states=True, use_cache=False).hidden_states
    for index in range(len(states) - 2):
        x, y = (states[i].double().reshape(-1, states[i].shape[-1]) for i in (index, index + 1))
        expected = 1 - torch.nn.functional.cosine_similarity(x, y, dim=-1).mean().item()
        assert influence(importance.blocks)[index] == pytest.approx(expected, rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("family", HYBRID_FAMILIES)
def test_removed_block_reloads_with_its_config_rewritten(family: str, tmp_path) -> None:
    model = tiny_model(family)
    layer_types = getattr(model.config, "layer_types", None)
    kinds = [block.kinds for block in describe(model).blocks]
    removal = remove_blocks(model, [1])
    expected = _logits(model)
    save_removed(model, tmp_path, removal)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_hidden_layers == 3
    assert [block.kinds for block in describe(reloaded).blocks] == kinds[:1] + kinds[2:]
    if layer_types is not None:
        assert list(reloaded.config.layer_types) == layer_types[:1] + layer_types[2:]
    logits = _logits(reloaded)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)


def test_a_block_pattern_no_period_can_select_is_one_clear_error_and_changes_nothing() -> None:
    model = tiny_model("jamba", num_hidden_layers=6)
    with pytest.raises(PvqError, match=r"block\(s\) 2 \(mamba\+mlp\) of jamba: .*attn_layer_period = 2"):
        remove_blocks(model, [2])
    assert len(describe(model).blocks) == 6 and model.config.num_hidden_layers == 6
    remove_blocks(model, [2, 3])
    assert (model.config.attn_layer_period, model.config.attn_layer_offset) == (2, 1)


def test_removing_a_sublayer_a_block_lacks_is_refused_and_changes_nothing() -> None:
    model = tiny_model("mamba2")
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(PvqError, match=r"mlp sublayer of block 0 of mamba2: the block \(mamba\) has none"):
        remove_sublayers(model, "mlp", [0])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    with pytest.raises(PvqError, match=r"attention sublayer of block 1 of nemotron_h: the block \(mlp\) has none"):
        remove_sublayers(tiny_model("nemotron_h"), "attention", [0, 1])


def test_removing_both_side_by_side_mixers_of_falcon_h1_leaves_the_mlp_update() -> None:
    model = tiny_model("falcon_h1")
    remove_sublayers(model, "attention", [0])
    block = describe(model).blocks[0]
    assert all(torch.count_nonzero(p) == 0 for mixer in block.mixers for p in mixer.module.parameters())
    assert torch.isfinite(_logits(model)).all()


@pytest.mark.parametrize("family", HYBRID_FAMILIES)
def test_ledger_rows_cover_state_space_and_convolution_projections(family: str) -> None:
    model = tiny_model(family)
    result = build_ledger(model, [token_ids(3, rows=2, length=12)], "rtn:4:channel")
    refs = {ref.name: ref for ref in describe(model).linears if ref.sublayer_kind != "router"}
    assert set(result.table["layer"]) == set(refs)
    mixer_rows = result.table[result.table["sublayer"].isin(["mamba", "short_conv", "linear_attention"])]
    assert set(mixer_rows["role"]) >= ({"qkvz", "ba", "out"} if family == "qwen3_next" else {"in", "out"})
    assert mixer_rows["relative_error"].between(0, 1).all()


@pytest.mark.parametrize("family", ACCEPTANCE_FAMILIES)
def test_pvq_info_and_remove_on_a_saved_hybrid(family: str, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr("measure.data.text.calibration_text", lambda: "A short calibration text. " * 20)
    source = save_tiny_model(family, tmp_path / "tiny")
    assert main(["info", str(source), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["block_kinds"] == ["+".join(kinds) for kinds in BLOCK_KINDS[family]]
    out = tmp_path / "removed"
    args = ["remove", "--model", str(source), "--indices", "1", "--out", str(out), "--sequences", "2"]
    assert main([*args, "--seq-len", "16"]) == 0
    original = AutoModelForCausalLM.from_pretrained(source).eval()
    layer_types = getattr(original.config, "layer_types", None)
    remove_blocks(original, [1])
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert reloaded.config.num_hidden_layers == 3
    if layer_types is not None:
        assert list(reloaded.config.layer_types) == layer_types[:1] + layer_types[2:]
    torch.testing.assert_close(_logits(reloaded), _logits(original), rtol=0, atol=0)


def test_pvq_remove_refusal_writes_nothing(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr("measure.data.text.calibration_text", lambda: "A short calibration text. " * 20)
    source = tmp_path / "tiny"
    save_tiny_model("jamba", source, num_hidden_layers=6)
    out = tmp_path / "removed"
    args = ["remove", "--model", str(source), "--indices", "2", "--out", str(out), "--sequences", "2"]
    assert main([*args, "--seq-len", "16"]) == 2
    assert "of jamba" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("family", [f for f in HYBRID_FAMILIES if f != "mamba2"])
def test_mlp_channels_and_attention_heads_of_hybrids_shrink_and_reload(family: str, tmp_path) -> None:
    heads = 0.0 if family == "qwen3_next" else 0.5  # Qwen3-Next's gated q_proj: see the refusal below
    ids = token_ids(3, rows=2, length=12)
    result = shrink_model(tiny_model(family), [ids], ShrinkSettings(mlp=0.25, heads=heads))
    save_shrunk(result, tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert result.removed_parameters > 0
    assert sum(p.numel() for p in reloaded.parameters()) == result.original_parameters - result.removed_parameters
    torch.testing.assert_close(_logits(reloaded), _logits(result.model), rtol=0, atol=0)


def test_width_pruning_what_a_hybrid_lacks_is_one_clear_error() -> None:
    with pytest.raises(PvqError, match="mamba2 has no MLP channels to remove: its blocks are mamba;"):
        plan_shrink(tiny_model("mamba2"), [token_ids(3, rows=2, length=12)], ShrinkSettings(mlp=0.25))
    with pytest.raises(PvqError, match=r"heads of qwen3_next block 1 attention: .* a query and an output gate"):
        plan_shrink(tiny_model("qwen3_next"), [token_ids(3, rows=2, length=12)], ShrinkSettings(heads=0.5))


def test_the_removal_study_runs_end_to_end_on_a_tiny_hybrid(tmp_path, capsys, monkeypatch) -> None:
    from measure.records.store import read_table
    from measure.removal.stacked import STUDY_TABLE, study_part

    text = "The history of the calibration text is long, and it is real English prose. " * 40
    monkeypatch.setattr("measure.data.text.calibration_text", lambda: text)
    monkeypatch.setattr("measure.data.text.evaluation_text", lambda: text[::-1])
    source = save_tiny_model("lfm2", tmp_path / "tiny")
    out = tmp_path / "study"
    study = ["--study", "--out", str(out), "--sequences", "2", "--seq-len", "24", "--eval-windows", "2",
             "--window", "32", "--max-removed", "1", "--probe-windows", "1", "--batch-size", "2", "--bits", "2,4",
             "--groups", "channel", "--pruner", "magnitude"]  # fmt: skip
    assert main(["remove", "--model", str(source), *study]) == 0
    units = study_part(read_table(out / f"{STUDY_TABLE}.parquet"), "units")
    assert sorted(units[units["unit"] == "block"]["block"]) == [0, 1, 2, 3]
    assert "Block Influence ranking" in capsys.readouterr().out


@pytest.mark.parametrize("family", HYBRID_FAMILIES)
def test_layer_sequential_capture_equals_whole_model_capture(family: str) -> None:
    """Block by block on recorded block inputs (GPTQ's scheme) gives the Grams of one whole-model pass."""
    model = tiny_model(family)
    ids = token_ids(3, rows=2, length=12)
    full, sequential = (capture(model, [ids], mode=mode) for mode in ("full", "sequential"))
    assert set(full.grams) == set(sequential.grams) == {ref.shared_input_group for ref in describe(model).linears
                                                         if ref.expert_index is None}  # fmt: skip
    for group, gram in full.grams.items():
        torch.testing.assert_close(sequential.grams[group].gram, gram.gram, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("family", ["lfm2", "qwen3_next", "granitemoehybrid", "falcon_h1", "jamba"])
def test_cached_decoding_of_a_removed_hybrid_equals_its_full_forward(family: str) -> None:
    """The hybrid caches (attention KV, convolution and state-space states) are laid out from the rewritten
    config, so one cached step after a prefill gives the full forward's last logits."""
    model = tiny_model(family)
    remove_blocks(model, [1])
    ids = token_ids(3, rows=2, length=12)[:1]
    with torch.no_grad():
        full = model(ids, use_cache=False).logits[:, -1]
        prefill = model(ids[:, :-1], use_cache=True)
        step = model(ids[:, -1:], past_key_values=prefill.past_key_values, use_cache=True).logits[:, -1]
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-5)


def test_granite_experts_beside_a_shared_mlp_are_two_channel_mixers_on_one_input(tmp_path) -> None:
    model = tiny_model("granitemoehybrid", num_local_experts=4, num_experts_per_tok=2)
    arch = describe(model)
    assert [block.kinds for block in arch.blocks] == [("mamba", "moe", "mlp"), ("attention", "moe", "mlp")] * 2
    block = arch.blocks[0]
    assert block.mlp is block.channel_mixers[0] and block.mlp.experts.count == 4
    groups = {ref.shared_input_group for ref in block.linears if ref.role in ("router", "gate_up")}
    assert groups == {"model.layers.0.{block_sparse_moe,shared_mlp}:input"}
    removal = remove_blocks(model, [1])
    save_removed(model, tmp_path, removal)
    torch.testing.assert_close(_logits(AutoModelForCausalLM.from_pretrained(tmp_path).eval()), _logits(model),
                               rtol=0, atol=0)  # fmt: skip
