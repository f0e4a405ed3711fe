"""Every figure's text sits inside the figure and no two texts overlap (tick labels, axis labels, titles and panel
letters, legends, free texts), and no legend covers a plotted data point, for every registered figure and every
cross-model figure, drawn from synthetic tables; the checks themselves find overlaps, clipping and covered points
built on purpose."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

from figures.catalog import cross_model
from figures.catalog.removal import STUDY, synthetic_study
from figures.registry import Artifact, load_catalog, synthetic_tables
from figures.render import draw
from figures.style import THESIS_RC, new_figure
from figures.text_layout import legend_problems, text_problems
from figures.ticks import sparse_log_minor_labels

FIGURES = [artifact for artifact in load_catalog().values() if artifact.kind == "figure"]
CROSS_FIGURES = [artifact for artifact in cross_model.ARTIFACTS if artifact.kind == "figure"]


def cross_model_tables(models: tuple[str, ...] = ("model-a", "model-b")) -> dict:
    """Synthetic removal studies of two models (different seeds), as the cross-model artifacts read them."""
    return {model: synthetic_study(np.random.default_rng(seed)) for seed, model in enumerate(models)}


def problems_of(artifact: Artifact, tables: dict, check=text_problems) -> list[str]:
    figure = draw(artifact, tables)
    with matplotlib.rc_context(THESIS_RC):
        return check(figure)


@pytest.mark.parametrize("artifact", FIGURES, ids=[artifact.name for artifact in FIGURES])
def test_registered_figure_has_no_overlapping_or_clipped_text(artifact):
    assert problems_of(artifact, synthetic_tables(artifact.needs)) == []


@pytest.mark.parametrize("artifact", CROSS_FIGURES, ids=[artifact.name for artifact in CROSS_FIGURES])
def test_cross_model_figure_has_no_overlapping_or_clipped_text(artifact):
    assert artifact.needs == (STUDY,)
    assert problems_of(artifact, cross_model_tables()) == []


@pytest.mark.parametrize("artifact", FIGURES, ids=[artifact.name for artifact in FIGURES])
def test_registered_figure_has_no_legend_over_its_data(artifact):
    assert problems_of(artifact, synthetic_tables(artifact.needs), legend_problems) == []


@pytest.mark.parametrize("artifact", CROSS_FIGURES, ids=[artifact.name for artifact in CROSS_FIGURES])
def test_cross_model_figure_has_no_legend_over_its_data(artifact):
    assert problems_of(artifact, cross_model_tables(), legend_problems) == []


def test_the_legend_check_finds_a_legend_on_a_point_and_accepts_one_beside_the_data():
    with matplotlib.rc_context(THESIS_RC):
        figure, ax = new_figure()
        ax.plot([0, 1], [0, 1], marker="o", label="a line")
        ax.scatter([0.05], [0.95], label="a point in the corner")
        ax.legend(loc="lower right")
        assert legend_problems(figure) == []
        ax.legend(loc="upper left")
        problems = legend_problems(figure)
    assert problems and all("'a point in the corner'" in problem for problem in problems), problems


def test_the_check_finds_two_overlapping_axis_labels_and_a_label_running_off_the_figure():
    with matplotlib.rc_context(THESIS_RC):
        figure, (left, right) = new_figure(ncols=2, height_ratio=0.45)
        left.set_xlabel("local removal error (removed residual update energy over the decoder output energy)")
        right.set_xlabel("local removal error (block view error)")
        problems = text_problems(figure)
    assert any("overlaps" in problem and "x label" in problem for problem in problems), problems
    assert any("leaves the figure" in problem for problem in problems), problems


def test_the_check_finds_a_text_on_a_tick_label_and_accepts_a_legend_with_its_own_texts():
    with matplotlib.rc_context(THESIS_RC):
        figure, ax = new_figure()
        ax.plot([0, 1], [0, 1], label="a line")
        ax.legend(loc="upper left")
        assert text_problems(figure) == []
        ax.text(0.5, -0.02, "on the tick labels", transform=ax.transAxes, va="top", ha="center")
        problems = text_problems(figure)
    assert problems and all("'on the tick labels'" in problem for problem in problems), problems


@pytest.mark.parametrize(("limits", "labelled"), [((0.15, 0.9), {0.2, 0.5}), ((1e-3, 1.0), set())])
def test_sparse_minor_labels_mark_2_and_5_times_a_power_of_ten_only_on_axes_under_one_decade(limits, labelled):
    with matplotlib.rc_context(THESIS_RC):
        figure, ax = new_figure(width_fraction=0.5)
        ax.set_xscale("log")
        ax.set_xlim(*limits)
        sparse_log_minor_labels(ax.xaxis)
        figure.canvas.draw()
        formatter = ax.xaxis.get_minor_formatter()
        minor = [x for x in ax.xaxis.get_minorticklocs() if limits[0] <= x <= limits[1]]
        shown = {round(x, 6) for x in minor if formatter(x)}
    assert shown == labelled
    assert all(formatter(x) == "" for x in minor if round(x, 6) not in labelled)
