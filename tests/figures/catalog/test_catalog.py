"""Every registered figure and table renders from small synthetic tables, with complete provenance."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from figure_toys import REQUIRED_PROVENANCE_KEYS, synthetic_facts
from matplotlib.contour import ContourSet

from figures.catalog import theory
from figures.experiments import EXPERIMENTS
from figures.registry import load_catalog, synthetic_tables
from figures.render import draw, render_artifact
from figures.style import THESIS_RC, method_style
from measure.records.store import read_table, write_table
from theory.formats import FORMATS

ARTIFACTS = load_catalog()
README = Path(__file__).resolve().parents[3] / "paper" / "README.md"


@pytest.mark.parametrize("name", list(ARTIFACTS))
def test_artifact_renders_from_synthetic_tables_with_complete_provenance(name, tmp_path):
    artifact = ARTIFACTS[name]
    rendered = render_artifact(artifact, synthetic_tables(artifact.needs), synthetic_facts(artifact), tmp_path)
    expected = {".pdf", ".png"} if artifact.kind == "figure" else {".tex"}
    assert {path.suffix for path in rendered.files} == expected
    assert all(path.stat().st_size > 0 for path in rendered.files)
    provenance = json.loads(rendered.sidecar.read_text())
    assert provenance.keys() >= REQUIRED_PROVENANCE_KEYS
    assert provenance["caption"].strip()
    assert set(provenance["files"]) == {path.name for path in rendered.files}
    assert provenance["protocol"].keys() == set(artifact.needs)


@pytest.mark.parametrize("name", [n for n, a in ARTIFACTS.items() if a.kind == "figure"])
def test_every_axis_is_labelled(name):
    artifact = ARTIFACTS[name]
    figure = draw(artifact, synthetic_tables(artifact.needs))
    for ax in figure.axes:
        assert ax.get_xlabel().strip() or ax.get_ylabel().strip(), f"{name}: an axis without a label"
    main = figure.axes[0]
    assert main.get_xlabel().strip() and main.get_ylabel().strip()


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_synthetic_table_is_seeded_nonempty_and_survives_the_result_store(name, tmp_path):
    """The stand-in is a function of its generator, has rows and unique columns, and reads back from parquet
    unchanged (as a computed table is read before rendering); its columns equal the real table's in
    test_experiment_schemas."""
    table = EXPERIMENTS[name].synthetic(np.random.default_rng(0))
    pd.testing.assert_frame_equal(table, EXPERIMENTS[name].synthetic(np.random.default_rng(0)))
    assert len(table) > 0 and table.columns.is_unique
    stored = read_table(write_table(table, tmp_path / f"{name}.parquet", {}))
    pd.testing.assert_frame_equal(stored, table.reset_index(drop=True))


@pytest.mark.parametrize("readme", [README, README.parents[1] / "README.md"], ids=["paper", "top"])
def test_readme_lists_every_registered_artifact(readme: Path) -> None:
    text = readme.read_text()
    missing = [name for name in ARTIFACTS if f"`{name}`" not in text]
    assert not missing, f"add {missing} to {readme}"


def test_the_readme_top_gives_both_commands_with_times_and_where_the_answers_open() -> None:
    top = "\n".join((README.parents[1] / "README.md").read_text().splitlines()[:40])
    for needed in ("make figures", "make test", "paper/index.html", "paper/ANSWERS.md", "pvq verify",
                   "pvq figures --archive"):  # fmt: skip
        assert needed in top, needed
    assert re.search(r"`make figures` cold \d+ min", top) and re.search(r"`make test` about \d+ min", top)


def test_sqnr_figure_plots_exactly_the_table_values_one_series_per_format_family():
    tables = synthetic_tables(("theory_formats_gaussian",))
    frame = tables["theory_formats_gaussian"]
    families = frame["method"].map(lambda method: FORMATS[method].family if method in FORMATS else method)
    figure = draw(ARTIFACTS["gaussian_sqnr_vs_bits"], tables)
    lines = {container.get_label(): container.lines[0] for container in figure.axes[0].containers}
    assert len(lines) == families.nunique()
    for family, rows in frame.groupby(families):
        style = method_style(family)
        line = lines[style.label]
        rows = rows.sort_values("bits_per_weight")
        np.testing.assert_allclose(line.get_xdata(), rows["bits_per_weight"])
        np.testing.assert_allclose(line.get_ydata(), rows["sqnr_db"])
        assert matplotlib.colors.same_color(line.get_color(), style.color)
        assert line.get_marker() == style.marker
        joined = line.get_linestyle() != "None"
        assert joined == (len(rows) > 1 and rows["bits_per_weight"].is_unique), family
    labels = {text.get_text() for text in figure.axes[0].texts}
    assert {"FP8 E4M3", "FP8 E5M2", "MXINT8"} <= labels


def test_int_vs_pruning_table_difference_matches_an_independent_computation(tmp_path):
    tables = synthetic_tables(("theory_formats_gaussian",))
    frame = tables["theory_formats_gaussian"]
    artifact = ARTIFACTS["sqnr_int_vs_pruning_gaussian"]
    rendered = render_artifact(artifact, tables, synthetic_facts(artifact), tmp_path)
    body = rendered.files[0].read_text().split("\\midrule")[1].split("\\bottomrule")[0]
    rows = [[float(cell) for cell in line.rstrip("\\ ").split("&")] for line in body.strip().splitlines()]
    quant = frame[frame["format"].str.fullmatch(r"int\d")].set_index("bits_per_weight")["sqnr_db"]
    prune = frame[frame["family"] == "pruning"].set_index("bits_per_weight")
    assert len(rows) == len(quant)
    for _bits, size, quant_db, sparsity_pct, prune_db, difference in rows:
        assert quant_db == pytest.approx(quant[size], abs=0.005)
        assert prune_db == pytest.approx(prune.loc[size, "sqnr_db"], abs=0.005)
        assert sparsity_pct == pytest.approx(100 * (1 - size / 16), abs=0.005)
        assert difference == pytest.approx(quant[size] - prune.loc[size, "sqnr_db"], abs=0.01)


def test_kurtosis_map_hatches_the_region_below_0_db_and_draws_its_contour():
    tables = synthetic_tables(("theory_kurtosis_bits", "theory_kurtosis_bits_truncated"))
    frame = tables["theory_kurtosis_bits"]
    assert frame["pruning_wins"].any() and not frame["pruning_wins"].all()
    with matplotlib.rc_context(THESIS_RC):
        figure = theory.kurtosis_bits_sqnr_difference(tables)
    contour_sets = [c for c in figure.axes[0].collections if isinstance(c, ContourSet)]
    hatched = [c for c in contour_sets if list(c.hatches) == [theory.PRUNING_WINS_HATCH]]
    assert len(hatched) == 1
    low, high = hatched[0].levels
    assert low < frame["diff_db"].min() and high == 0.0
    lines = [c for c in contour_sets if c.filled is False]
    assert [list(c.levels) for c in lines] == [[0.0]]
    filled = contour_sets[0]
    assert filled.levels.min() <= frame["diff_db"].min() and filled.levels.max() >= frame["diff_db"].max()
