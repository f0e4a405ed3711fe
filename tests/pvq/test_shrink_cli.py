"""`pvq shrink` writes a loadable smaller model or one clear error with nothing written; the shrink spec term."""

from __future__ import annotations

import re

import pytest
import torch
from tiny_models import save_tiny_model, tiny_model
from transformers import AutoModelForCausalLM

from measure.compress import apply, spec
from pvq.cli import main
from theory.errors import PvqError

CALIBRATION = ["--sequences", "2", "--seq-len", "16", "--device", "cpu"]


@pytest.fixture
def tiny_folder(tmp_path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("measure.data.text.calibration_text", lambda: "A short calibration text. " * 20)
    return save_tiny_model("llama", tmp_path / "tiny")


def test_pvq_shrink_writes_a_model_plain_transformers_loads_with_fewer_channels_and_heads(tiny_folder, tmp_path):
    out = tmp_path / "shrunk"
    assert main(["shrink", "--model", str(tiny_folder), "--mlp", "0.25", "--heads", "0.5", "--out", str(out),
                 *CALIBRATION]) == 0  # fmt: skip
    config = AutoModelForCausalLM.from_pretrained(out).config
    assert (config.intermediate_size, config.num_attention_heads, config.num_key_value_heads) == (48, 2, 1)
    per_block = tmp_path / "per_block"
    assert main(["shrink", "--model", str(tiny_folder), "--mlp", "0.25,0.25", "--out", str(per_block),
                 *CALIBRATION]) == 0  # fmt: skip
    assert AutoModelForCausalLM.from_pretrained(per_block).config.intermediate_size == 48


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--mlp", "1.0"], r"in \[0, 1\)"),
        (["--mlp", "-0.2"], r"in \[0, 1\)"),
        (["--heads", "0.9"], "leaves none"),
        (["--mlp", "0"], "nothing to remove"),
        (["--mlp", "0.5", "--score", "nope"], "unknown score 'nope'"),
        (["--mlp", "0.25,0.5"], r"llama config holds one mlp width \(intermediate_size\).*the uniform mode"),
        (["--mlp", "0.25,0.25,0.5"], "one fraction per block: the model has 2 blocks, got 3"),
    ],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(tiny_folder, tmp_path, capsys, arguments, message):
    out = tmp_path / "shrunk"
    assert main(["shrink", "--model", str(tiny_folder), *arguments, "--out", str(out), *CALIBRATION]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["tiny"]


def test_an_unreadable_mlp_list_is_an_argument_error_and_writes_nothing(tiny_folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_status:
        main(["shrink", "--model", str(tiny_folder), "--mlp", "0.25,x", "--out", str(tmp_path / "s"),
              *CALIBRATION])
    assert exit_status.value.code == 2
    assert "a fraction or comma-separated fractions, got '0.25,x'" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]


def test_heads_of_a_fused_qkv_family_are_refused_and_nothing_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("measure.data.text.calibration_text", lambda: "A short calibration text. " * 20)
    folder = save_tiny_model("gpt2", tmp_path / "tiny")
    out = tmp_path / "shrunk"
    assert main(["shrink", "--model", str(folder), "--heads", "0.5", "--out", str(out), *CALIBRATION]) == 2
    assert "cannot remove heads of gpt2" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]


def test_shrink_spec_term_replaces_the_model_with_the_shrunk_one():
    model = tiny_model("llama")
    batches = [torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(0))]
    report = apply.apply_spec(model, "shrink:mlp=0.5:heads=0.5:score=wanda:norefit", batches)
    assert (model.config.intermediate_size, model.config.num_attention_heads) == (32, 2)
    assert model.model.layers[0].mlp.down_proj.weight.shape == (32, 32)
    assert report.size["parameters"] == sum(p.numel() for p in model.parameters())
    assert report.model_steps[0]["removed_fraction"] > 0
    assert model(batches[0]).logits.shape == (2, 16, 320)
    with pytest.raises(PvqError, match="unknown shrink token 'bogus'"):
        spec.parse_spec("shrink:mlp=0.5:bogus")
    with pytest.raises(PvqError, match="needs mlp=F"):
        spec.parse_spec("shrink:score=wanda")


def test_heads_a_model_cannot_lose_are_refused_before_calibration(tmp_path, capsys, monkeypatch):
    def no_calibration(*args: object) -> None:
        raise AssertionError("the shrink is checked against the model before calibration")

    monkeypatch.setattr("pvq.commands.shrink.model_calibration", no_calibration)
    folder = save_tiny_model("gemma3", tmp_path / "kv1", num_attention_heads=4, num_key_value_heads=1, head_dim=8)
    out = tmp_path / "shrunk"
    assert main(["shrink", "--model", str(folder), "--heads", "0.34", "--out", str(out), *CALIBRATION]) == 2
    assert "removing 0.34 of 1 KV groups removes none" in capsys.readouterr().err
    assert not out.exists()
