"""Generic removal: removed models equal skipped blocks, run with a KV cache, and reload with identical logits."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from tiny_inputs import token_ids
from tiny_models import tiny_model
from transformers import AutoModelForCausalLM

from measure.compress import apply, spec
from measure.compress.importance import influence, measure_importance, record_router_scores
from measure.compress.remove import (
    RECORD_FILE,
    Removal,
    drop_experts,
    parse_removal_term,
    remove_blocks,
    remove_sublayers,
    removed_fraction,
    removed_parameters,
    save_removed,
    sublayer_removed,
)
from measure.models.architecture import describe, parameter_counts
from theory.errors import PvqError

SLIDING = {"layer_types": ["sliding_attention", "full_attention"] * 2, "sliding_window": 4}
FAMILIES = {
    "llama": {},
    "qwen2": {"layer_types": ["full_attention"] * 4},
    "gemma3": SLIDING,
    "gpt_neox": {},
    "mixtral": {},
    "qwen2_moe": {"layer_types": ["full_attention"] * 4},
    "gpt2": {},
    "falcon": {},
}
"""Four-block tiny configs: sequential, sandwich norms with sliding windows, parallel, MoE (fused experts)."""


def _model(family: str) -> torch.nn.Module:
    blocks = {"n_layer": 4} if family == "gpt2" else {"num_hidden_layers": 4}
    return tiny_model(family, **blocks, **FAMILIES[family])


def _logits(model: torch.nn.Module, ids: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(token_ids(2, rows=2, length=12) if ids is None else ids, use_cache=False).logits


def _skipped_logits(model: torch.nn.Module, skipped: list[int]) -> torch.Tensor:
    """Logits of the original model with the blocks ``skipped`` returning their input (forward hooks)."""

    def identity(module: torch.nn.Module, args: tuple, kwargs: dict, output: object) -> object:
        x = args[0] if args else kwargs["hidden_states"]
        return (x, *output[1:]) if isinstance(output, tuple) else x

    arch = describe(model)
    handles = [arch.blocks[i].module.register_forward_hook(identity, with_kwargs=True) for i in skipped]
    try:
        return _logits(model)
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_removed_blocks_equal_skipped_blocks_and_reload_identically(family: str, tmp_path) -> None:
    model = _model(family)
    expected = _skipped_logits(model, [0, 2])
    removal = remove_blocks(model, [2, 0])
    assert removal.blocks == [0, 2] and removal.original_blocks == 4
    config = model.config.get_text_config()
    assert config.num_hidden_layers == 2 and len(describe(model).blocks) == 2
    if "layer_types" in FAMILIES[family]:
        assert config.layer_types == [FAMILIES[family]["layer_types"][i] for i in (1, 3)]
    indices = [m.layer_idx for m in model.modules() if isinstance(getattr(m, "layer_idx", None), int)]
    assert sorted(set(indices)) == [0, 1]
    torch.testing.assert_close(_logits(model), expected, rtol=0, atol=0)
    save_removed(model, tmp_path / "removed", removal)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "removed").eval()
    torch.testing.assert_close(_logits(reloaded), expected, rtol=0, atol=0)
    assert json.loads((tmp_path / "removed" / RECORD_FILE).read_text())["blocks"] == [0, 2]


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt_neox", "olmo2", "phi", "qwen2_moe"])
def test_removing_a_block_with_zeroed_residual_branches_changes_nothing(family: str) -> None:
    model = tiny_model(family, num_hidden_layers=3, **({"layer_types": ["full_attention"] * 3}
                                                        if family in ("gemma3", "qwen2_moe") else {}))  # fmt: skip
    remove_sublayers(model, "attention", [1])
    remove_sublayers(model, "mlp", [1])
    zeroed = _logits(model)
    remove_blocks(model, [1])
    torch.testing.assert_close(_logits(model), zeroed, rtol=0, atol=0)


def test_kv_cache_decoding_of_a_removed_sliding_window_model_equals_full_forward() -> None:
    model = _model("gemma3")
    remove_blocks(model, [1])
    ids = torch.randint(3, 300, (1, 10), generator=torch.Generator().manual_seed(5))
    full = _logits(model, ids)
    with torch.no_grad():
        output = model(ids[:, :6], use_cache=True)
        steps = [output.logits]
        cache = output.past_key_values
        for position in range(6, 10):
            output = model(ids[:, position : position + 1], past_key_values=cache, use_cache=True)
            steps.append(output.logits)
            cache = output.past_key_values
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-5)
    assert len(cache.layers) == 3


@pytest.mark.parametrize("kind", ["attention", "mlp"])
def test_sublayer_removal_zeroes_the_update_and_reloads(kind: str, tmp_path) -> None:
    model = _model("gemma3")
    arch = describe(model)
    block = arch.blocks[2]
    with sublayer_removed(arch, kind, 2):
        ablated = _logits(model)
    original = _logits(model)
    assert not torch.equal(ablated, original)
    removal = remove_sublayers(model, kind, [2])
    torch.testing.assert_close(_logits(model), ablated, rtol=0, atol=0)
    save_removed(model, tmp_path / "sub", removal)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "sub").eval()
    torch.testing.assert_close(_logits(reloaded), ablated, rtol=0, atol=0)
    sublayer = getattr(block, kind)
    norms = sum(p.numel() for n in (sublayer.input_norm, sublayer.output_norm) for p in n.parameters())
    expected = sum(p.numel() for p in sublayer.module.parameters()) + norms
    assert removed_parameters(arch, removal) == expected


def test_removed_fraction_of_whole_blocks() -> None:
    model = _model("llama")
    arch = describe(model)
    block = sum(p.numel() for p in arch.blocks[0].module.parameters())
    decoder = parameter_counts(arch)["decoder"]
    assert removed_fraction(arch, Removal(blocks=[0, 3])) == pytest.approx(2 * block / decoder)
    assert removed_fraction(arch, Removal(blocks=[0, 1, 2, 3])) == pytest.approx(1.0)


def _masked_router_logits(model: torch.nn.Module, dropped: dict[int, list[int]]) -> torch.Tensor:
    """Mixtral with the dropped experts' router logits at −∞ (softmax → top-2 → renormalize, recomputed)."""
    arch = describe(model)

    def masked(index: int):
        def hook(module: torch.nn.Module, args: tuple, output: tuple) -> tuple:
            logits = output[0].clone()
            logits[:, dropped[index]] = -math_inf
            top, chosen = torch.topk(torch.softmax(logits.float(), dim=-1), 2, dim=-1)
            return logits, top / top.sum(-1, keepdim=True), chosen

        return hook

    handles = [arch.blocks[i].mlp.router.module.register_forward_hook(masked(i)) for i in dropped]
    try:
        return _logits(model)
    finally:
        for handle in handles:
            handle.remove()


math_inf = float("inf")


def test_dropping_experts_equals_masking_them_in_the_router() -> None:
    model = tiny_model("mixtral")
    with record_router_scores(describe(model)) as scores, torch.no_grad():
        model(token_ids(2, rows=2, length=12))
    reference = copy.deepcopy(model)
    removal = drop_experts(model, scores, 1)
    for index, dropped in removal.experts.items():
        assert dropped == [int(np.argmin(scores[index]))]
    masked = _masked_router_logits(reference, removal.experts)
    torch.testing.assert_close(_logits(model), masked, rtol=1e-5, atol=1e-6)
    assert model.config.num_local_experts == 3


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "olmoe", "gpt_oss"])
def test_models_with_dropped_experts_reload_identically(family: str, tmp_path) -> None:
    model = tiny_model(family)
    arch = describe(model)
    with record_router_scores(arch) as scores, torch.no_grad():
        model(token_ids(2, rows=2, length=12))
    per_expert = sum(ref.parameter_count for ref in arch.blocks[0].mlp.linears if ref.expert_index == 0)
    router_row = arch.blocks[0].mlp.router.parameter_count // 4
    removal = drop_experts(model, scores, 2)
    after = _logits(model)
    assert all(block.mlp.experts.count == 2 for block in describe(model).blocks)
    save_removed(model, tmp_path / "moe", removal)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "moe").eval()
    torch.testing.assert_close(_logits(reloaded), after, rtol=0, atol=0)
    assert removed_parameters(arch, removal) == 2 * 2 * (per_expert + router_row)


def test_bad_removal_requests_are_one_clear_error() -> None:
    model = _model("llama")
    with pytest.raises(PvqError, match="cannot remove 4 blocks from a model of 4"):
        remove_blocks(model, [0, 1, 2, 3])
    with pytest.raises(PvqError, match=r"block index 7 is out of range: the model has blocks 0\.\.3"):
        remove_blocks(model, [1, 7])
    with pytest.raises(PvqError, match="list a block twice"):
        remove_blocks(model, [1, 1])
    with pytest.raises(PvqError, match="attention block index -1 is out of range"):
        remove_sublayers(model, "attention", [-1])
    with pytest.raises(PvqError, match="no mixture-of-experts blocks"):
        drop_experts(model, {}, 1)
    with pytest.raises(PvqError, match="cannot drop 3 of 4 experts"):
        drop_experts(tiny_model("mixtral"), {0: np.ones(4), 1: np.ones(4)}, 3)
    with pytest.raises(PvqError, match=r"unknown removal metric 'deepest'"):
        parse_removal_term(("deepest", "2"))
    with pytest.raises(PvqError, match="needs a count"):
        parse_removal_term(("bi",))
    with pytest.raises(PvqError, match="comma-separated block indices"):
        parse_removal_term(("blocks=1,x",))
    assert len(describe(model).blocks) == 4


def test_remove_spec_terms() -> None:
    batches = list(torch.randint(3, 300, (4, 16), generator=torch.Generator().manual_seed(1)).split(2))
    model = _model("llama")
    expected = _skipped_logits(model, [1, 3])
    report = apply.apply_spec(model, "remove:blocks=1,3", batches)
    torch.testing.assert_close(_logits(model), expected, rtol=0, atol=0)
    assert report.model_steps[0]["removal"]["blocks"] == [1, 3]
    assert report.model_steps[0]["equal_compression_bits_per_weight"] == pytest.approx(8.0)
    model = _model("llama")
    lowest = int(np.argmin(influence(measure_importance(model, batches).blocks)))
    report = apply.apply_spec(model, "remove:bi:1", batches)
    assert report.model_steps[0]["removal"]["blocks"] == [lowest]
    assert spec.parse_spec("remove:mlp=0,2").steps[0].params == {"unit": "mlp", "indices": [0, 2]}
    assert spec.parse_spec("remove:random:2:seed=4").steps[0].params == {"metric": "random", "count": 2, "seed": 4}
    with pytest.raises(PvqError, match="ranks units on calibration data"):
        apply.apply_spec(_model("llama"), "remove:angular:1", [])


def test_pvq_remove_writes_a_checkpoint_that_reloads(
    tmp_path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tiny_models import tiny_tokenizer

    from pvq.cli import main

    monkeypatch.setattr("measure.data.text.calibration_text", lambda: "A short calibration text. " * 20)
    source = tmp_path / "tiny"
    model = _model("llama")
    model.save_pretrained(source)
    tiny_tokenizer().save_pretrained(source)
    expected = _skipped_logits(model, [2])
    out = tmp_path / "removed"
    assert main(["remove", "--model", str(source), "--indices", "2", "--out", str(out), "--sequences", "2",
                 "--seq-len", "16"]) == 0  # fmt: skip
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(_logits(reloaded), expected, rtol=0, atol=0)
    assert main(["remove", "--model", str(source), "--metric", "bi", "--blocks", "1", "--sequences", "2",
                 "--seq-len", "16"]) == 0  # fmt: skip
    assert "removed {'blocks': [" in capsys.readouterr().out
    assert main(["remove", "--model", str(source), "--indices", "9", "--sequences", "2", "--seq-len", "16"]) == 2
    assert "block index 9 is out of range" in capsys.readouterr().err
    assert main(["remove", "--model", str(source), "--metric", "nope", "--blocks", "1", "--sequences", "2",
                 "--seq-len", "16"]) == 2  # fmt: skip
    assert "unknown removal metric 'nope'" in capsys.readouterr().err
