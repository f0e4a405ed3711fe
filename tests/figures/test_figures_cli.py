"""`pvq figures` and `pvq paper` end to end, with every experiment computing its synthetic table."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from figures import paper, paper_cli
from figures.experiments import EXPERIMENTS
from figures.registry import load_catalog
from measure.cli import main
from theory.errors import PvqError

ARTIFACTS = load_catalog()
PAPER_DIR = Path(__file__).resolve().parents[2] / "paper"


def synthetic_compute(exp):
    """A compute function returning the experiment's synthetic table (so no theory or model runs)."""
    return lambda config, context: exp.synthetic(np.random.default_rng(context.seed))


def build_args(results: Path, out: Path) -> argparse.Namespace:
    return argparse.Namespace(model=None, results=results, out=out, device="cpu", dtype="float32", seed=0)


@pytest.fixture
def synthetic_experiments(monkeypatch):
    for name, exp in list(EXPERIMENTS.items()):
        synthetic = dataclasses.replace(exp, compute=synthetic_compute(exp), code=())
        monkeypatch.setitem(EXPERIMENTS, name, synthetic)


def test_list_names_every_registered_artifact(capsys):
    assert main(["figures", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ARTIFACTS)


def test_unknown_name_is_a_clear_error(capsys, tmp_path):
    assert main(["figures", "--only", "no_such_figure", "--out", str(tmp_path)]) == 2
    assert "no_such_figure" in capsys.readouterr().err


def test_figures_writes_every_artifact_then_reuses_every_experiment(synthetic_experiments, tmp_path, capsys):
    argv = ["figures", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "paper")]
    experiments = {name for artifact in ARTIFACTS.values() for name in artifact.needs}
    assert main(argv) == 0
    assert f"{len(experiments)} computed, 0 from cache" in capsys.readouterr().out
    for artifact in ARTIFACTS.values():
        suffixes = (".pdf", ".png", ".json") if artifact.kind == "figure" else (".tex", ".json")
        for suffix in suffixes:
            assert artifact.stem(tmp_path / "paper").with_suffix(suffix).exists()
    section = (tmp_path / "paper" / "sections" / "results.tex").read_text()
    assert all(f"{{{artifact.folder}/{name}." in section for name, artifact in ARTIFACTS.items())
    assert main(argv) == 0
    assert " 0 computed" in capsys.readouterr().out


def test_paper_without_latex_says_how_to_install_it(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(paper.shutil, "which", lambda name: None)
    args = build_args(tmp_path / "results", tmp_path / "paper")
    with pytest.raises(PvqError, match="apt-get install texlive-latex-extra latexmk"):
        paper_cli.run(args)
    assert not (tmp_path / "results").exists()


@pytest.mark.skipif(shutil.which("latexmk") is None, reason="LaTeX (latexmk) is not installed")
def test_paper_builds_the_chapter_pdf(synthetic_experiments, tmp_path, capsys):
    out = tmp_path / "paper"
    shutil.copytree(PAPER_DIR, out, ignore=shutil.ignore_patterns("build", "figures", "tables", "results.tex"))
    args = build_args(tmp_path / "results", out)
    assert paper_cli.run(args) == 0
    assert (out / "build" / "main.pdf").stat().st_size > 10_000
