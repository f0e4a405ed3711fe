"""`pvq models` (listing, cache state, an unknown --fetch) and `pvq bounds` through the command line (JSON
output against the library's table, an unknown layer, bits out of range), on a tiny model folder."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from measure.bounds import bounds_for_model
from measure.data import text
from measure.models.defaults import DEFAULT_MODEL, DEFAULT_MODELS
from measure.models.load import conversion_directory, load_model
from pvq.cli import main
from pvq.commands.bounds import COLUMNS

TEXT = "The history of the calibration text is long, and it is real English prose. " * 60
LAYER = "model.layers.0.self_attn.q_proj"
SMALL = ["--rows", "2", "--opt-dim", "8", "--max-chunks", "1", "--sequences", "2", "--seq-len", "32", "--no-sdp",
         "--time-limit", "1"]  # fmt: skip


@pytest.fixture
def short_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text, "calibration_text", lambda: TEXT)


def test_models_lists_every_default_with_its_cache_state(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PVQ_CACHE", str(tmp_path))
    cached = conversion_directory(DEFAULT_MODEL, DEFAULT_MODELS[DEFAULT_MODEL].asset.sha256)
    assert cached.parent == tmp_path / "models" and cached.name.startswith(f"{DEFAULT_MODEL}-")
    cached.mkdir(parents=True)
    (cached / "pvq_source.json").write_text("{}")
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"cache: {tmp_path}  (set PVQ_CACHE to move it)"
    assert len(lines) == 1 + len(DEFAULT_MODELS)
    for line, (name, model) in zip(lines[1:], DEFAULT_MODELS.items(), strict=True):
        marker = " (default)" if name == DEFAULT_MODEL else ""
        state = f"cached at {cached}" if name == DEFAULT_MODEL else "not fetched yet (fetched on first use)"
        facts = f"{model.description}; {model.architecture}, {model.num_blocks} blocks"
        assert line == f"{name}{marker}: {facts}; {state}; stored size read from the GGUF once fetched"


def test_models_fetch_of_an_unknown_name_is_one_error_naming_the_defaults(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PVQ_CACHE", str(tmp_path))
    assert main(["models", "--fetch", "no-such-model"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("pvq models: error: unknown model 'no-such-model': not a default (")
    assert all(name in line for name in DEFAULT_MODELS)
    assert list(tmp_path.iterdir()) == []


def test_bounds_json_is_the_library_table_of_the_same_problem(tiny_dir, short_text, capsys) -> None:
    assert main(["bounds", "--model", str(tiny_dir), "--layer", LAYER, "--bits", "2", "--json", *SMALL]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["model"], printed["layer"], printed["bits"]) == (str(tiny_dir), LAYER, 2)
    expected = bounds_for_model(load_model(str(tiny_dir)), [LAYER], [2], opt_dim=8, rows=2, max_chunks=1,
                                sdp_bits=[], sequences=2, sequence_length=32, time_limit=1.0, seed=0)  # fmt: skip
    shown = pd.DataFrame(printed["results"])
    assert list(shown.columns) == list(COLUMNS)
    measured = [column for column in COLUMNS if column != "seconds"]
    pd.testing.assert_frame_equal(shown[measured], expected[measured].reset_index(drop=True), check_dtype=False)
    exact = shown.set_index(["family", "method"]).loc[("quantization", "exact")]
    heuristics = shown[(shown["family"] == "quantization") & (shown["kind"] == "heuristic")]
    assert (heuristics["sqnr_db"] <= exact["sqnr_db"] + 1e-9).all()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--layer", "model.layers.0.no_such_proj"],
         "pvq bounds: error: no linear layer called model.layers.0.no_such_proj; see `pvq info MODEL --linears`"),
        (["--layer", LAYER, "--bits", "99"], "pvq bounds: error: bits must be an integer in "),
        (["--layer", LAYER, "--bits", "1"], "pvq bounds: error: bits must be an integer in "),
    ],
)  # fmt: skip
def test_bounds_bad_input_exits_2_with_one_line(tiny_dir, short_text, capsys, options, message) -> None:
    assert main(["bounds", "--model", str(tiny_dir), *options, *SMALL]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = [line for line in captured.err.splitlines() if "error" in line]  # the rest: loading progress bars
    assert line.startswith(message)
