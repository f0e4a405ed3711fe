"""Rendering is deterministic; a build runs experiments, renders, writes the results section, then reuses."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from figure_toys import REQUIRED_PROVENANCE_KEYS, ToyModels, make_counting_experiment, synthetic_facts, toy_context

from figures.build import build, summary
from figures.experiments import EXPERIMENTS
from figures.registry import Artifact, load_catalog, synthetic_tables
from figures.render import render_artifact
from figures.style import new_figure, thesis_table
from theory.errors import PvqError


def render_catalog(out_dir: Path) -> dict[str, bytes]:
    files = {}
    for artifact in load_catalog().values():
        rendered = render_artifact(artifact, synthetic_tables(artifact.needs), synthetic_facts(artifact), out_dir)
        files.update({path.name: path.read_bytes() for path in rendered.files})
    return files


def test_two_renders_give_byte_identical_pdf_png_and_tex(tmp_path):
    first, second = render_catalog(tmp_path / "a"), render_catalog(tmp_path / "b")
    assert first.keys() == second.keys()
    assert {name.rsplit(".", 1)[1] for name in first} >= {"tex", "pdf", "png"}
    changed = [name for name in first if first[name] != second[name]]
    assert not changed, f"not deterministic: {changed}"
    pdf = next(data for name, data in first.items() if name.endswith(".pdf"))
    assert b"CreationDate" not in pdf


def toy_figure(tables):
    fig, ax = new_figure()
    frame = tables["toy_exp"]
    ax.plot(frame["x"], frame["y"])
    ax.set_xlabel("x [1]")
    ax.set_ylabel("y [dB]")
    return fig


def toy_table(tables):
    return thesis_table(tables["toy_exp"].assign(name="a_b"), {"name": "Name", "x": "$x$", "y": "$y$ [dB]"})


def caption(tables, facts):
    return f"Toy result of {facts['model_id']} with scale {facts['protocol']['toy_exp']['scale']}."


ARTIFACTS = [
    Artifact("toy_figure", "figure", toy_figure, ("toy_exp",), caption, "Toy section"),
    Artifact("toy_table", "table", toy_table, ("toy_exp",), caption, "Toy section"),
]


@pytest.fixture
def registered_toy(monkeypatch):
    calls: list[str] = []
    monkeypatch.setitem(EXPERIMENTS, "toy_exp", make_counting_experiment("toy_exp", calls))
    return calls


def test_build_renders_everything_with_provenance_then_reuses_the_cache(tmp_path, registered_toy):
    models = ToyModels()
    out = tmp_path / "paper"
    report = build(ARTIFACTS, ARTIFACTS, toy_context(tmp_path / "results", models), out)
    assert registered_toy == ["toy_exp"]
    home = out / "toy"  # the toy experiment needs a model: its artifacts live in the model's home
    for stem in ("figures/toy_figure.pdf", "figures/toy_figure.png", "tables/toy_table.tex"):
        assert (home / stem).stat().st_size > 0
    assert not (out / "figures").exists() and not (out / "tables").exists()
    provenance = json.loads((home / "figures" / "toy_figure.json").read_text())
    assert provenance.keys() >= REQUIRED_PROVENANCE_KEYS
    assert provenance["model_hash"] == "hash-a" and provenance["grid_detection"] == {"verdict": "toy: no grid"}
    assert provenance["protocol"] == {"toy_exp": {"scale": 2.0}}
    assert provenance["experiments"]["toy_exp"]["status"] == "computed"
    assert provenance["caption"] == "Toy result of toy with scale 2.0."
    table_tex = (home / "tables" / "toy_table.tex").read_text()
    assert "\\toprule" in table_tex and "\\bottomrule" in table_tex and "a\\_b" in table_tex
    section = report.results_section.read_text()
    assert section.count("\\section{Toy section}") == 1
    assert "\\includegraphics[width=\\textwidth]{toy/figures/toy_figure.pdf}" in section
    table_float = "\\pvqtable{tab:toy_table}{Toy result of toy with scale 2.0.}{\\input{toy/tables/toy_table.tex}}"
    assert table_float in section
    assert "\\caption{Toy result of toy with scale 2.0.}" in section
    text = summary(report)
    assert "1 computed, 0 from cache" in text and "wall time" in text

    again = build(ARTIFACTS, ARTIFACTS, toy_context(tmp_path / "results", models), out)
    assert registered_toy == ["toy_exp"]
    assert "0 computed, 1 from cache" in summary(again)
    assert json.loads((home / "figures" / "toy_figure.json").read_text())["experiments"]["toy_exp"]["status"] == (
        "cached"
    )


def test_only_one_artifact_keeps_the_others_in_the_results_section(tmp_path, registered_toy):
    out = tmp_path / "paper"
    context = toy_context(tmp_path / "results", ToyModels())
    build(ARTIFACTS, ARTIFACTS, context, out)
    report = build(ARTIFACTS[:1], ARTIFACTS, context, out)
    assert [item.name for item in report.rendered] == ["toy_figure"]
    assert "toy/tables/toy_table.tex" in report.results_section.read_text()


def test_a_draw_function_returning_the_wrong_type_is_a_clear_error(tmp_path, registered_toy):
    wrong = Artifact("wrong", "figure", lambda tables: pd.DataFrame(), ("toy_exp",), caption, "Toy")
    with pytest.raises(PvqError, match="must return a Figure"):
        build([wrong], [wrong], toy_context(tmp_path / "results", ToyModels()), tmp_path / "paper")
    assert not list((tmp_path / "paper").rglob("wrong.json"))
