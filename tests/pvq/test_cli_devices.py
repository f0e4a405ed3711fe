"""`--device` / `--dtype` on every model-touching `pvq` subcommand: parsed, checked before any work, honoured.

On this CPU-only machine CUDA is absent, so asking for it must be one clear error (exit code 2) before a model
is loaded or a file written; a bfloat16 run must load the model in bfloat16 and key its results apart; the
layer-sequential pass (the path a GPU takes, model in CPU memory) must give the full pass's ledger rows and
removal choice, and report its peak memory per block.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from tiny_models import save_tiny_model

from measure.capture.placement import device_map_for, load_placed
from measure.data import text
from measure.models.load import load_model
from measure.records.store import read_provenance
from pvq.cli import COMMANDS, build_parser, main
from pvq.commands.common import placement
from pvq.commands.run import check_device_here, with_overrides
from pvq.scale.grid_file import parse_grid
from theory.errors import PvqError

MISSING = "/nonexistent/pvq-model"
MODEL_FREE = {"models", "theory", "verify"}
ARGV = {
    "info": [MISSING],
    "bounds": ["--model", MISSING, "--layer", "model.layers.0.mlp.up_proj"],
    "ledger": ["--model", MISSING, "--out", "{tmp}/ledger"],
    "remove": ["--model", MISSING, "--blocks", "1"],
    "shrink": ["--model", MISSING, "--mlp", "0.25", "--out", "{tmp}/shrunk"],
    "allocate": ["--model", MISSING, "--budget", "4", "--out", "{tmp}/allocation.parquet"],
    "eval": ["--model", MISSING, "--ppl", "--out", "{tmp}/eval"],
    "figures": ["--results", "{tmp}/results", "--out", "{tmp}/paper"],
    "paper": ["--results", "{tmp}/results", "--out", "{tmp}/paper"],
    "run": ["{tmp}/grid.toml"],
}
"""The smallest command line of each model-touching subcommand (the model and grid file do not exist)."""
NO_CUDA = "--device cuda asked for, but torch sees no CUDA device; use --device cpu or auto"
SMALL = ["--sequences", "4", "--seq-len", "16", "--batch-size", "2"]
METHODS = "magnitude:0.5,wanda:0.5,rtn:4:channel,gptq:4:channel"
TEXT = "The quick brown fox jumps over the lazy dog while the cat sleeps by the warm fire. " * 4


def argv(name: str, tmp: Path) -> list[str]:
    return [name, *(part.format(tmp=tmp) for part in ARGV[name])]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model("llama", tmp_path_factory.mktemp("models") / "llama", num_hidden_layers=3)


@pytest.fixture
def short_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """Calibrate on a few hundred bytes instead of the Wikipedia split (the commands read it at run time)."""
    monkeypatch.setattr(text, "calibration_text", lambda: TEXT)


def test_every_subcommand_is_model_touching_or_model_free() -> None:
    assert set(COMMANDS) == set(ARGV) | MODEL_FREE


@pytest.mark.parametrize("name", sorted(ARGV))
def test_parser_accepts_device_and_dtype(name: str, tmp_path: Path) -> None:
    args = build_parser().parse_args([*argv(name, tmp_path), "--device", "cuda:1", "--dtype", "bfloat16"])
    assert (args.device, args.dtype) == ("cuda:1", "bfloat16")


@pytest.mark.parametrize("name", sorted(ARGV))
def test_cuda_without_cuda_is_one_clear_error_before_any_work(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([*argv(name, tmp_path), "--device", "cuda"]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"pvq {name}: error: {NO_CUDA}"]
    assert captured.out == ""
    assert list(tmp_path.iterdir()) == []


def test_bfloat16_loads_the_model_in_bfloat16_and_keys_it_apart(
    tiny_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    full = load_placed(str(tiny_dir), placement(argparse.Namespace(device="cpu", dtype="float32")))
    half = load_placed(str(tiny_dir), placement(argparse.Namespace(device="auto", dtype="bfloat16")))
    assert full.model.dtype == torch.float32 and half.model.dtype == torch.bfloat16
    assert half.model_hash == f"{full.model_hash}+bfloat16"
    assert main(["info", str(tiny_dir), "--dtype", "bfloat16", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["device"], info["dtype"], info["model_hash"]) == ("cpu", "bfloat16", half.model_hash)


def ledger_run(model: Path, out: Path, *options: str) -> tuple[pd.DataFrame, dict]:
    assert main(["ledger", "--model", str(model), "--methods", METHODS, *SMALL, "--out", str(out), *options]) == 0
    return pd.read_parquet(out / "ledger.parquet"), read_provenance(out / "ledger.parquet")


def test_ledger_in_bfloat16_runs_the_methods_on_the_bfloat16_weights(
    tiny_dir: Path, tmp_path: Path, short_text: None
) -> None:
    table, provenance = ledger_run(tiny_dir, tmp_path, "--dtype", "bfloat16")
    assert provenance["dtype"] == "bfloat16" and provenance["model_hash"].endswith("+bfloat16")
    assert len(table) == 3 * 7 * len(METHODS.split(","))
    assert all(math.isfinite(value) and value > 0 for value in table["sqnr_db"])


def test_sequential_ledger_matches_full_and_logs_memory_per_block(
    tiny_dir: Path, tmp_path: Path, short_text: None, capsys: pytest.CaptureFixture
) -> None:
    full, full_provenance = ledger_run(tiny_dir, tmp_path / "full", "--device", "cpu")
    assert "peak memory per block" not in capsys.readouterr().err
    sequential, provenance = ledger_run(
        tiny_dir, tmp_path / "sequential", "--device", "cpu", "--mode", "sequential"
    )
    assert "peak memory per block (process RSS on cpu, 3 blocks): " in capsys.readouterr().err
    assert (full_provenance["capture_mode"], provenance["capture_mode"]) == ("full", "sequential")
    numeric = ["relative_error", "sqnr_db", "weight_sqnr_db"]
    identity = [column for column in full.columns if column not in [*numeric, "seconds"]]
    pd.testing.assert_frame_equal(sequential[identity], full[identity])
    pd.testing.assert_frame_equal(sequential[numeric], full[numeric], rtol=1e-5)


def test_sequential_removal_removes_what_full_removes(
    tiny_dir: Path, short_text: None, capsys: pytest.CaptureFixture
) -> None:
    removed = {}
    for mode in ("full", "sequential"):
        assert main(["remove", "--model", str(tiny_dir), "--blocks", "1", *SMALL, "--mode", mode]) == 0
        captured = capsys.readouterr()
        removed[mode] = [line for line in captured.out.splitlines() if line.startswith("removed ")]
        assert ("peak memory per block" in captured.err) == (mode == "sequential")
    assert len(removed["full"]) == 1 and removed["sequential"] == removed["full"]


def test_removal_study_refuses_sequential_mode(capsys: pytest.CaptureFixture) -> None:
    assert main(["remove", "--model", MISSING, "--study", "--mode", "sequential"]) == 2
    assert "--study runs the whole model" in capsys.readouterr().err


def test_eval_spreads_over_several_gpus_with_accelerate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert (device_map_for("cuda"), device_map_for("cuda:1"), device_map_for("cpu")) == ("auto", None, None)
    requested = {}

    def fake_load(name: str, **options: object) -> None:
        requested.update(options)
        raise PvqError("stop before loading")

    monkeypatch.setattr("measure.evaluation.request.load_model", fake_load)
    assert main(["eval", "--model", MISSING, "--ppl", "--device", "cuda", "--dtype", "float16"]) == 2
    assert requested == {"device": "cuda", "dtype": torch.float16, "device_map": "auto"}
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert device_map_for("cuda") is None


def test_device_map_load_gives_the_same_logits(tiny_dir: Path) -> None:
    ids = torch.arange(3, 19)[None]
    with torch.no_grad():
        expected = load_model(str(tiny_dir)).model(ids).logits
        mapped = load_model(str(tiny_dir), device_map="auto").model(ids).logits
    torch.testing.assert_close(mapped, expected, rtol=0, atol=0)


def test_run_overrides_device_and_dtype_of_every_job(monkeypatch: pytest.MonkeyPatch) -> None:
    grid = '[[grid]]\nmodels = ["smollm2-135m"]\nevaluations = ["ppl"]\n'
    jobs = parse_grid(f'device = "cpu"\n{grid}dtype = "float16"\n{grid}')
    assert len(jobs) == 2
    moved = with_overrides(jobs, "cuda", None)
    assert [job.device for job in moved] == ["cuda", "cuda"]
    assert [job.job_id for job in moved] == [job.job_id for job in jobs]
    half = with_overrides(jobs, None, "bfloat16")
    assert len(half) == 1 and half[0].dtype == "bfloat16" and half[0].job_id not in {job.job_id for job in jobs}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check_device_here("cuda", "slurm")  # the jobs run on GPU nodes, not here
    with pytest.raises(PvqError, match="torch sees no CUDA device"):
        check_device_here("cuda", "local")
    with pytest.raises(PvqError, match="unknown device 'gpu'"):
        check_device_here("gpu", "slurm")


def test_placement_keeps_the_model_in_cpu_memory_for_a_sequential_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("measure.capture.placement.resolve_device", lambda name: name)
    on_gpu = placement(argparse.Namespace(device="cuda", dtype="float16"))
    assert (on_gpu.capture_mode, on_gpu.home, on_gpu.dtype) == ("sequential", "cpu", torch.float16)
    whole = placement(argparse.Namespace(device="cuda", dtype="float16"), capture_mode="full")
    assert (whole.capture_mode, whole.home) == ("full", "cuda")
    assert placement(argparse.Namespace(device="cpu", dtype="float32")).capture_mode == "full"
