"""Capture: Grams equal direct XᵀX, full and layer-sequential modes agree, block statistics are exact."""

from __future__ import annotations

import pytest
import torch
from tiny_inputs import token_batches
from transformers import LlamaConfig, LlamaForCausalLM

from measure.capture.placement import Placement, capture_placed
from measure.capture.statistics import capture
from measure.data.calibration import token_windows
from measure.models.architecture import describe
from theory.errors import PvqError


def _tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=97, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def test_gram_equals_direct_product_of_captured_inputs() -> None:
    model = _tiny_llama()
    inputs: dict[str, list[torch.Tensor]] = {}
    arch = describe(model)
    ref = next(r for r in arch.linears if r.role == "down")
    handle = ref.module.register_forward_pre_hook(lambda m, a: inputs.setdefault("x", []).append(a[0]))
    with torch.no_grad():
        for ids in token_batches(1, low=0, high=97):
            model(ids)
    handle.remove()
    x = torch.cat([t.reshape(-1, t.shape[-1]) for t in inputs["x"]]).double()
    result = capture(model, token_batches(1, low=0, high=97), keep_rows=1000)
    gram = result.gram_for(ref.name)
    assert gram.tokens == 64
    torch.testing.assert_close(gram.gram, x.T @ x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gram.sample, x)


def test_a_placed_capture_is_the_capture_of_its_mode_with_the_block_memory_of_a_sequential_pass(capsys) -> None:
    model = _tiny_llama()
    seen: list[int] = []
    placed = capture_placed(model, token_batches(1, low=0, high=97), Placement("cpu", capture_mode="sequential"),
                            block_hooks=lambda block: seen.append(block.index) or [])  # fmt: skip
    direct = capture(model, token_batches(1, low=0, high=97), mode="sequential")
    assert placed.mode == "sequential" and seen == [0, 1, 2]
    assert all(torch.equal(gram.gram, placed.grams[group].gram) for group, gram in direct.grams.items())
    assert "peak memory per block (process RSS on cpu, 3 blocks)" in capsys.readouterr().err
    assert capture_placed(model, token_batches(1, low=0, high=97)).mode == "full"
    assert capsys.readouterr().err == ""


def test_full_and_sequential_capture_agree() -> None:
    model = _tiny_llama()
    full = capture(model, token_batches(1, low=0, high=97), mode="full")
    sequential = capture(model, token_batches(1, low=0, high=97), mode="sequential")
    assert full.grams.keys() == sequential.grams.keys()
    for group, accumulator in full.grams.items():
        torch.testing.assert_close(accumulator.gram, sequential.grams[group].gram, rtol=1e-5, atol=1e-6)
    for a, b in zip(full.blocks, sequential.blocks, strict=True):
        assert a.tokens == b.tokens == 64
        assert a.mean_cosine == pytest.approx(b.mean_cosine, rel=1e-6)
        assert a.identity_error == pytest.approx(b.identity_error, rel=1e-6)


def test_block_statistics_match_output_hidden_states() -> None:
    model = _tiny_llama()
    result = capture(model, token_batches(1, low=0, high=97))
    hidden = [[] for _ in range(4)]
    with torch.no_grad():
        for ids in token_batches(1, low=0, high=97):
            states = model(ids, output_hidden_states=True).hidden_states
            for i in range(3):
                hidden[i].append(states[i])
    # hidden_states[i] is block i's input; the last entry is after the final norm, so compare blocks 0..1
    for i in range(2):
        x = torch.cat(hidden[i]).double()
        y = torch.cat(hidden[i + 1]).double()
        cosine = torch.nn.functional.cosine_similarity(x, y, dim=-1).mean().item()
        assert result.blocks[i].mean_cosine == pytest.approx(cosine, rel=1e-6)
        assert result.blocks[i].identity_error == pytest.approx(((y - x) ** 2).sum().item(), rel=1e-6)


def test_bad_input_is_a_clear_error() -> None:
    model = _tiny_llama()
    with pytest.raises(PvqError, match="capture mode"):
        capture(model, token_batches(1, low=0, high=97), mode="sideways")
    with pytest.raises(PvqError, match="no calibration batches"):
        capture(model, [])
    with pytest.raises(PvqError, match="fewer than"):
        token_windows(torch.arange(10), 4, 16, None)
    result = capture(model, token_batches(1, low=0, high=97))
    with pytest.raises(PvqError, match="no linear layer"):
        result.gram_for("model.layers.9.mlp.down_proj")
