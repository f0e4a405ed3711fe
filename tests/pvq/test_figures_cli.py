"""`pvq figures` and `pvq paper` end to end, with every experiment computing its synthetic table (on a tiny
model folder, so nothing is fetched)."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny_models import save_tiny_model

from figures import paper
from figures.experiments import EXPERIMENTS, model_slug
from figures.layout import artifact_home, model_dependent
from figures.registry import load_catalog
from measure.records.store import read_table
from pvq.cli import main
from pvq.commands import paper as paper_cli
from theory.errors import PvqError

ARTIFACTS = load_catalog()
MAGIC = {".pdf": b"%PDF-", ".png": b"\x89PNG\r\n\x1a\n", ".tex": b"\\begin{tabular}"}
PAPER_DIR = Path(__file__).resolve().parents[2] / "paper"


def synthetic_compute(exp):
    """A compute function returning the experiment's synthetic table (so no theory or model runs)."""
    return lambda config, context: exp.synthetic(np.random.default_rng(context.seed))


def build_args(results: Path, out: Path, model: Path | None = None) -> argparse.Namespace:
    return argparse.Namespace(model=model and str(model), results=results, out=out, device="cpu", dtype="float32",
                              seed=0)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model("llama", tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture
def synthetic_experiments(monkeypatch):
    for name, exp in list(EXPERIMENTS.items()):
        synthetic = dataclasses.replace(exp, compute=synthetic_compute(exp))
        monkeypatch.setitem(EXPERIMENTS, name, synthetic)


def test_list_names_every_registered_artifact(capsys):
    assert main(["figures", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ARTIFACTS)


def test_unknown_name_is_a_clear_error(capsys, tmp_path):
    assert main(["figures", "--only", "no_such_figure", "--out", str(tmp_path)]) == 2
    assert "no_such_figure" in capsys.readouterr().err


def test_figures_writes_every_artifact_then_reuses_every_experiment(synthetic_experiments, tiny_dir, tmp_path,
                                                                     capsys):  # fmt: skip
    argv = ["figures", "--model", str(tiny_dir), "--results", str(tmp_path / "results"), "--out",
            str(tmp_path / "paper")]  # fmt: skip
    defaults = {name: artifact for name, artifact in ARTIFACTS.items() if artifact.default}
    experiments = {name for artifact in defaults.values() for name in artifact.needs}
    assert main(argv) == 0
    assert f"{len(experiments)} computed, 0 from cache" in capsys.readouterr().out
    opt_in = [artifact for artifact in ARTIFACTS.values() if not artifact.default]
    assert not any(artifact.sidecar(artifact_home(tmp_path / "paper", artifact, str(tiny_dir))).exists()
                   for artifact in opt_in)  # fmt: skip
    for name, artifact in defaults.items():
        home = artifact_home(tmp_path / "paper", artifact, str(tiny_dir))
        assert home == tmp_path / "paper" / (model_slug(str(tiny_dir)) if model_dependent(artifact) else "")
        stem = artifact.stem(home)
        suffixes = (".pdf", ".png") if artifact.kind == "figure" else (".tex",)
        provenance = json.loads(artifact.sidecar(home).read_text())
        assert (provenance["artifact"], provenance["needs"]) == (name, list(artifact.needs))
        assert provenance["files"] == {
            stem.with_suffix(suffix).name: hashlib.sha256(stem.with_suffix(suffix).read_bytes()).hexdigest()
            for suffix in suffixes
        }
        assert all(stem.with_suffix(suffix).read_bytes().startswith(MAGIC[suffix]) for suffix in suffixes)
    for name in experiments:
        folder = "model-free" if not EXPERIMENTS[name].needs_model else model_slug(str(tiny_dir))
        stored = read_table(tmp_path / "results" / folder / f"{name}.parquet")
        pd.testing.assert_frame_equal(stored, EXPERIMENTS[name].synthetic(np.random.default_rng(0)))
    assert not (tmp_path / "paper" / "sections" / "results.tex").exists()  # the chapter shows the default model
    assert (tmp_path / "paper" / "index.html").is_file()
    assert main(argv) == 0
    assert " 0 computed" in capsys.readouterr().out


def test_paper_without_latex_says_how_to_install_it(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(paper.shutil, "which", lambda name: None)
    args = build_args(tmp_path / "results", tmp_path / "paper")
    with pytest.raises(PvqError, match="apt-get install texlive-latex-extra latexmk"):
        paper_cli.run(args)
    assert not (tmp_path / "results").exists()


@pytest.mark.skipif(shutil.which("latexmk") is None, reason="LaTeX (latexmk) is not installed")
def test_paper_builds_the_chapter_pdf(synthetic_experiments, tiny_dir, tmp_path, capsys):
    out = tmp_path / "paper"
    shutil.copytree(PAPER_DIR, out, ignore=shutil.ignore_patterns("build", "figures", "tables", "results.tex"))
    args = build_args(tmp_path / "results", out, tiny_dir)
    assert paper_cli.run(args) == 0
    assert (out / "build" / "main.pdf").stat().st_size > 10_000


@pytest.mark.parametrize("flag", ["--models", "--model"])
def test_models_all_builds_every_default_in_turn_the_default_model_first(flag, monkeypatch, capsys, tmp_path):
    from measure.models.defaults import DEFAULT_MODEL, DEFAULT_MODELS
    from pvq.commands import figures as figures_cli

    built, checked = [], []

    def fake_build(args: argparse.Namespace, only: list[str] | None = None) -> str:
        context = figures_cli.experiment_context(args)
        built.append((context.model_name, only, args.out, context.results_root))
        return f"summary of {context.model_name}"

    def fake_check(experiments, context) -> None:
        assert not built, "every model is checked before the first build"
        checked.append((context.model_name, [exp.name for exp in experiments]))

    monkeypatch.setattr(figures_cli, "run_build", fake_build)
    monkeypatch.setattr(figures_cli, "check_experiments", fake_check)
    argv = ["figures", flag, "all", "--only", "block_importance_across_depth", "--out", str(tmp_path / "paper"),
            "--results", str(tmp_path / "results")]  # fmt: skip
    assert main(argv) == 0
    names = [name for name, _, _, _ in built]
    assert checked == [(name, ["removal_study"]) for name in names]
    assert names[0] == DEFAULT_MODEL and sorted(names) == sorted(DEFAULT_MODELS) and len(names) == 3
    assert {(only[0], out, results) for _, only, out, results in built} == {
        ("block_importance_across_depth", tmp_path / "paper", tmp_path / "results")}
    printed = capsys.readouterr().out
    assert all(f"== {name} ==\nsummary of {name}" in printed for name in names)
    built.clear()
    checked.clear()
    assert main(["figures", flag, "gemma3-270m", "--out", str(tmp_path / "paper")]) == 0
    assert [name for name, _, _, _ in built] == ["gemma3-270m"] and checked == []


def test_paper_of_all_models_is_refused_before_any_work(tmp_path):
    args = build_args(tmp_path / "results", tmp_path / "paper")
    args.model = "all"
    with pytest.raises(PvqError, match="pvq figures --models all"):
        paper_cli.run(args)
    assert not (tmp_path / "results").exists()


def test_a_setting_a_model_refuses_stops_the_check_naming_the_experiment_and_the_model(tiny_dir, tmp_path):
    from figures.experiments import ExperimentContext, check_experiments, lookup

    context = ExperimentContext(model_name=str(tiny_dir), results_root=tmp_path / "results")
    with pytest.raises(PvqError, match=r"experiment 'removal_study' on .*tiny-llama: the study removes 1\.\."
                                       r"max_removed blocks; max_removed must lie in 1\.\.1 \(the model has 2"):
        check_experiments(lookup(["compression_frontier", "removal_study"]), context)
    with pytest.raises(PvqError, match=r"'joint_frontier' .*'remove:bi:2': remove:bi removes 1\.\.1 units"):
        check_experiments(lookup(["joint_frontier"]), context)
    check_experiments(lookup(["compression_frontier", "model_summary"]), context)
    assert not (tmp_path / "results").exists()
