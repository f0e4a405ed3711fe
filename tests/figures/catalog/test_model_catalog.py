"""The model figures and tables draw exactly the numbers of their tables (synthetic tables, no model)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from figure_toys import synthetic_facts
from matplotlib.figure import Figure
from scipy import stats

from figures.catalog import frontier, removal, weights
from figures.registry import load_catalog, synthetic_tables
from figures.render import draw, render_artifact
from measure.records.store import read_table, write_table

ARTIFACTS = load_catalog()


def _tex_rows(path) -> list[list[str]]:
    body = path.read_text().split("\\midrule")[1].split("\\bottomrule")[0]
    return [[cell.strip() for cell in line.rstrip("\\ ").split("&")] for line in body.strip().splitlines()]


def _study_figure(name: str, *parts: str) -> tuple[Figure, tuple[pd.DataFrame, ...]]:
    """Artifact ``name`` drawn from the synthetic removal study, and the named parts of that study."""
    tables = synthetic_tables((removal.STUDY,))
    return draw(ARTIFACTS[name], tables), removal.study_parts(tables, *parts)


def test_tensor_figure_plots_one_point_per_tensor_and_bits_coloured_by_kurtosis():
    tables = synthetic_tables((weights.STUDY,))
    frame = tables[weights.STUDY]
    figure = draw(ARTIFACTS["llm_tensor_pruning_vs_quantization"], tables)
    panels = [ax for ax in figure.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == frame["bits"].nunique() == len(weights.BITS)
    for ax, (bits, rows) in zip(panels, frame.groupby("bits"), strict=True):
        points = ax.collections[0]
        assert len(points.get_offsets()) == len(rows) == frame["layer"].nunique()
        np.testing.assert_allclose(points.get_offsets(), rows[["prune_sqnr_db", "quant_sqnr_db"]].to_numpy())
        np.testing.assert_allclose(points.get_array(), rows["kurtosis"])
        assert str(bits) in ax.get_title()
        assert "dB" in ax.get_xlabel()
    assert figure.axes[-1].get_ylabel() == "kurtosis"  # the colour bar


def test_stacked_study_survives_parquet_and_splits_back_into_its_parts(tmp_path):
    parts = {
        "levels": pd.DataFrame({"ordering": ["bi", "bi"], "removed": [1, 2], "blocks": ["3", "2,3"],
                                "range_low_term": ["gptq:8", None]}),
        "end_to_end": pd.DataFrame({"method": ["bi", "rtn"], "removed": [1, None], "perplexity": [21.0, 20.5]}),
        "angular": pd.DataFrame({"n": [1, 1], "start": [0, 1], "chosen": [True, False]}),
    }
    path = write_table(removal.stack_parts(parts), tmp_path / "study.parquet", {})
    stacked = read_table(path)
    levels = removal.study_part(stacked, "levels")
    assert list(levels["blocks"]) == ["3", "2,3"]
    assert list(levels["removed"]) == [1, 2]
    assert levels["range_low_term"].iloc[0] == "gptq:8" and pd.isna(levels["range_low_term"].iloc[1])
    assert "perplexity" not in levels.columns
    end = removal.study_part(stacked, "end_to_end")
    assert end["removed"].iloc[0] == 1 and pd.isna(end["removed"].iloc[1])
    assert list(removal.study_part(stacked, "angular")["chosen"].astype(bool)) == [True, False]


def test_answer_table_shows_the_free_mask_rows_of_the_answer_with_their_numbers(tmp_path):
    tables = synthetic_tables((removal.STUDY,))
    answer = removal.study_part(tables[removal.STUDY], "answer")
    artifact = ARTIFACTS["removal_verdicts"]
    rendered = render_artifact(artifact, tables, synthetic_facts(artifact), tmp_path)
    header = rendered.files[0].read_text().split("\\toprule")[1].split("\\midrule")[0]
    for column in ("View", "Ord.", "$b(f)$", "Removal", "Best", "Worst", "Worst H", "RD", "$\\equiv$G"):
        assert column in header
    free = answer[(answer["mask_convention"] == "free") & answer["ordering"].isin(removal.TABLE_ORDERINGS)
                  & answer["removed"].isin(removal.TABLE_LEVELS)]  # fmt: skip
    rows = _tex_rows(rendered.files[0])
    assert len(rows) == len(free) == 4 * 2 * 2
    for cells, level in zip(rows, free.itertuples(), strict=True):
        assert (cells[1], int(cells[2])) == (level.ordering, level.removed)
        assert float(cells[3]) == pytest.approx(level.bits_per_decoder_parameter, abs=0.05)
        assert float(cells[4]) == pytest.approx(level.removal_db, abs=0.05)
        best_db, code = cells[5].split()
        assert float(best_db) == pytest.approx(level.best_db, abs=0.05)
        assert code == removal.SERIES_CODES[level.best_series]
        equivalent = dict(zip(("G", "M", "R"), cells[9:], strict=True))  # series sorted by name
        for code, series in (("G", "gptq_g128"), ("M", "magnitude"), ("R", "rtn_g128")):
            bits = getattr(level, f"equivalent_bits_{series}")
            assert equivalent[code].lstrip("<>") == ("–" if np.isnan(bits) else f"{bits:.1f}")


def test_answer_sentence_is_read_off_the_answer_table():
    tables = synthetic_tables((removal.STUDY,))
    answer = removal.study_part(tables[removal.STUDY], "answer")
    artifact = ARTIFACTS["removal_verdicts"]
    caption = artifact.caption(tables, synthetic_facts(artifact))
    rows = answer[(answer["ordering"] == "bi") & (answer["mask_convention"] == "free") & (answer["removed"] == 2)]
    assert f"removing the 2 lowest-BI blocks ($b(f) = {rows['bits_per_decoder_parameter'].iloc[0]:.2f}$" in caption
    series = removal.answer_series(rows)
    assert series == "gptq_g128"  # the first quantizer of ANSWER_SERIES measured, in every view
    for view, prose in removal.VIEW_PROSE.items():
        row = rows[rows["view"] == view].iloc[0]
        words = {"below": "fewer than ", "above": "more than "}.get(row[f"equivalent_bits_{series}_censored"], "")
        bits = row[f"equivalent_bits_{series}"]
        assert f"{words}{bits:.1f}-bit {removal.SERIES_NAMES[series]} {prose}" in caption


def test_removal_figure_draws_every_curve_and_the_removal_levels_of_each_view():
    figure, (points, levels) = _study_figure("removal_vs_bounds", "points", "levels")
    views = list(removal.VIEW_TITLES)
    assert len([ax for ax in figure.axes if ax.get_visible()]) == len(views)
    for ax, view in zip(figure.axes, views, strict=True):
        assert ax.get_xlabel() == "bits per decoder parameter" and ax.get_yscale() == "log"
        rows = points[(points["view"] == view) & ~points["mixed"].astype(bool)]
        curves = rows.groupby([rows["series"], rows["mask_convention"].astype("string").fillna("")]).ngroups
        # per ordering: filled markers at b(f), open ones at the stored size; one line for the stored format
        caps = 2 * levels["ordering"].nunique() if view == "end_to_end" else 0  # the intervals' caps
        assert len(ax.lines) == curves + 2 * levels["ordering"].nunique() + 1 + caps
        for ordering, group in levels.groupby("ordering"):
            line = next(line for line in ax.lines if ordering in line.get_label().lower())
            np.testing.assert_allclose(line.get_xdata(), group["bits_per_decoder_parameter"])
            np.testing.assert_allclose(line.get_ydata(), group[f"removal_error_{view}"])
        rd = [line for line in ax.lines if line.get_label() == "Gaussian RD reference"]
        assert len(rd) == (1 if view.startswith("layer") else 0)


def test_importance_figure_draws_bi_angular_attention_and_mlp_per_block():
    figure, (units, angular) = _study_figure("block_importance_across_depth", "units", "angular")
    lines = {line.get_label(): line for line in figure.axes[0].lines}
    assert len(lines) == 4
    bi = lines[removal.IMPORTANCE_SERIES["bi"][0]]
    blocks = units[units["unit"] == "block"].sort_values("block")
    np.testing.assert_allclose(bi.get_ydata(), blocks["influence"])
    first = angular[angular["n"] == 1].sort_values("start")
    angular_line = lines[removal.IMPORTANCE_SERIES["angular"][0]]
    np.testing.assert_allclose(angular_line.get_ydata(), first["angular_distance"])
    assert figure.axes[0].get_xlabel() == "block index"


def test_propagation_caption_states_the_correlations_computed_independently():
    tables = synthetic_tables((removal.STUDY,))
    single = removal.study_part(tables[removal.STUDY], "single_units")
    artifact = ARTIFACTS["error_propagation"]
    caption = artifact.caption(tables, synthetic_facts(artifact))
    local, kl = np.log10(single["removal_relative_error"]), np.log10(single["kl_to_reference_nats"])
    assert f"Pearson $r = {stats.pearsonr(local, kl).statistic:.2f}$" in caption
    assert f"\\rho = {stats.spearmanr(local, kl).statistic:.2f}$ ($n = {len(single)}$)" in caption
    figure = draw(artifact, tables)
    alone, sets = figure.axes
    for ax, frame in ((alone, single), (sets, removal.study_part(tables[removal.STUDY], "levels"))):
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        drawn = np.concatenate([points.get_offsets() for points in ax.collections])
        assert len(drawn) == len(frame)
        assert sorted(drawn[:, 1]) == pytest.approx(sorted(frame["kl_to_reference_nats"]))


def test_frontier_plots_every_point_at_its_bits_per_linear_weight_in_both_panels():
    tables = synthetic_tables((frontier.FRONTIER, removal.STUDY))
    points = frontier.frontier_points(tables)
    end_to_end = removal.study_part(tables[removal.STUDY], "end_to_end")
    study_points = end_to_end.drop_duplicates(["method", "bits_per_decoder_parameter"])
    assert len(points) == len(tables[frontier.FRONTIER]) + len(study_points)
    figure = draw(ARTIFACTS["perplexity_vs_size"], tables)
    ppl, kl = figure.axes[:2]
    for ax, column in ((ppl, "perplexity"), (kl, "kl_to_reference_nats")):
        assert ax.get_xlabel() == "bits per linear weight"
        drawn = np.concatenate([np.column_stack([line.get_xdata(), line.get_ydata()]) for line in ax.lines
                                if not line.get_label().startswith("_")  # interval caps, the stored size line
                                and line.get_label() not in ("original (dequantized)", "stored format")])
        expected = points[["bits_per_linear_weight", column]].to_numpy(float)
        np.testing.assert_allclose(drawn[np.lexsort(drawn.T)], expected[np.lexsort(expected.T)])
    assert ppl.get_ylabel() == "perplexity" and kl.get_ylabel() == "KL (nats/token)"


def test_benchmark_table_has_one_row_per_configuration_and_one_accuracy_column_per_task(tmp_path):
    tables = synthetic_tables(("compression_benchmarks",))
    frame = tables["compression_benchmarks"]
    artifact = ARTIFACTS["compression_benchmarks"]
    rendered = render_artifact(artifact, tables, synthetic_facts(artifact), tmp_path)
    rows = _tex_rows(rendered.files[0])
    assert len(rows) == frame["spec"].nunique()
    for cells, (_, rows_of_spec) in zip(rows, frame.groupby("spec", sort=False), strict=True):
        first = rows_of_spec.iloc[0]
        assert float(cells[1]) == pytest.approx(first["bits_per_model_parameter"], abs=0.005)
        expected = sorted(f"{100 * a:.1f} ± {100 * e:.1f} (N={int(n)})" for a, e, n in
                          rows_of_spec[["accuracy", "accuracy_stderr", "questions"]].to_numpy())
        assert sorted(cells[5:]) == expected
    caption = artifact.caption(tables, synthetic_facts(artifact))
    assert "--limit 20" in caption and "two standard errors" in caption


def test_an_accuracy_difference_inside_two_standard_errors_is_not_called_a_difference():
    from figures.catalog.models import accuracy_differences

    frame = pd.DataFrame([
        {"spec": "", "task": "csqa", "accuracy": 0.40, "accuracy_stderr": 0.05},
        {"spec": "gptq:4:g128", "task": "csqa", "accuracy": 0.35, "accuracy_stderr": 0.05},
        {"spec": "remove:bi:4", "task": "csqa", "accuracy": 0.10, "accuracy_stderr": 0.02},
    ])  # fmt: skip
    text = accuracy_differences(frame)
    assert "gptq:4:g128 on csqa: -5.0 points ($\\pm$14.1 at two standard errors, indistinguishable)" in text
    assert "remove:bi:4 on csqa: -30.0 points" in text and "lower)" in text


def test_a_series_measured_in_the_local_views_only_gets_no_legend_entry_on_the_perplexity_figure():
    """The random removal order is evaluated in the local views only (no perplexity): a legend entry for it would
    name points the figure does not draw."""
    from figures.registry import ARTIFACTS

    tables = synthetic_tables(ARTIFACTS["perplexity_vs_size"].needs)
    stacked = tables[removal.STUDY]
    local_only = (stacked["table"] == "end_to_end") & (stacked["method"] == "bi")
    tables[removal.STUDY] = stacked.assign(perplexity=stacked["perplexity"].mask(local_only))
    figure = draw(ARTIFACTS["perplexity_vs_size"], tables)
    labels = [text.get_text() for legend in figure.legends for text in legend.get_texts()]
    assert "Removal (BI, ShortGPT)" not in labels and "Removal (angular)" in labels
