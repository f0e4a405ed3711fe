"""The real default model end to end: registry fetch, safetensors round trip, perplexity on real text."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from measure.data.text import evaluation_text
from measure.models.defaults import DEFAULT_MODEL, get_default
from measure.models.fetch import ensure_asset
from measure.models.load import load_model
from measure.models.weight_grid import detect_model_grid
from theory.errors import PvqError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_model():
    return load_model(DEFAULT_MODEL)


def test_safetensors_round_trip_gives_identical_logits(default_model) -> None:
    gguf = ensure_asset(get_default(DEFAULT_MODEL).asset)
    from_gguf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    ids = default_model.tokenizer(evaluation_text()[:2000], return_tensors="pt").input_ids[:, :128]
    with torch.no_grad():
        expected = from_gguf(ids).logits
        actual = default_model.model(ids).logits
    assert torch.equal(expected, actual)


def test_perplexity_on_the_evaluation_text_is_the_recorded_value(default_model) -> None:
    """exp(mean −log p(next token)) from the logits, over 8 windows of 512 evaluation tokens: 21.458 when
    recorded (float32, CPU), pinned to ±1 %."""
    ids = default_model.tokenizer(evaluation_text(), return_tensors="pt").input_ids[0]
    windows = ids[: 8 * 512].reshape(8, 512)
    with torch.no_grad():
        logits = default_model.model(windows).logits.double()
    log_p = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, windows[:, 1:, None])
    perplexity = math.exp(-log_p.mean().item())
    print(f"SmolLM2-135M perplexity on 8x512 evaluation tokens: {perplexity:.3f}")
    assert perplexity == pytest.approx(21.458, rel=0.01)


def test_default_weights_are_detected_on_a_4bit_grid(default_model) -> None:
    linears = [(n, m.weight) for n, m in default_model.model.model.layers.named_modules()
               if isinstance(m, torch.nn.Linear)]
    report = detect_model_grid(linears)
    assert report.on_grid == report.tensors == 30 * 7
    assert report.bits == [4] and report.block_sizes == [32]


def test_unknown_model_name_is_a_clear_error() -> None:
    with pytest.raises(PvqError, match="unknown model 'no-such-model'"):
        load_model("no-such-model")
    with pytest.raises(PvqError, match="does not exist"):
        load_model("/nonexistent/model.gguf")
