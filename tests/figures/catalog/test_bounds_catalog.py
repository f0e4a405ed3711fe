"""The per-layer bounds figure and table draw exactly their table's numbers; the stand-in table has the real
table's columns and dtypes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from figure_toys import synthetic_facts
from tiny_models import tiny_model, tiny_tokenizer

from figures.catalog import bounds
from figures.registry import load_catalog, synthetic_tables
from figures.render import draw, render_artifact
from measure.bounds import bounds_for_model

ARTIFACTS = load_catalog()


def test_stand_in_table_has_the_columns_and_dtypes_of_the_sweep():
    loaded = SimpleNamespace(model=tiny_model("llama"), tokenizer=tiny_tokenizer(), bos_per_window=False)
    real = bounds_for_model(loaded, ["model.layers.0.self_attn.q_proj"], [2], opt_dim=8, rows=2, max_chunks=1,
                            sdp_bits=[], sequences=2, sequence_length=32, batch_size=2).drop(columns="seconds")
    stand_in = synthetic_tables((bounds.SWEEP,))[bounds.SWEEP]
    assert list(stand_in.columns) == list(real.columns)
    assert [str(dtype) for dtype in stand_in.dtypes] == [str(dtype) for dtype in real.dtypes]


def test_each_layer_panel_draws_the_table_values_with_their_row_intervals_and_the_reference():
    tables = synthetic_tables((bounds.SWEEP,))
    frame = tables[bounds.SWEEP]
    figure = draw(ARTIFACTS["per_layer_bounds"], tables)
    assert len(figure.axes) == frame["layer"].nunique()
    for ax in figure.axes:
        block, role = ax.get_title().removeprefix("block ").split(" ")
        rows = frame[(frame["block"] == int(block)) & (frame["role"] == role)]
        drawn = {container.get_label(): container for container in ax.containers}
        assert len(drawn) == len(bounds.SERIES)
        for family, method, column, label, _, _ in bounds.SERIES:
            expected = rows[(rows["family"] == family) & (rows["method"] == method)].sort_values("bits")
            line, _, (bars,) = drawn[label].lines
            np.testing.assert_allclose(line.get_xdata(), expected["bits"], atol=0.15)  # dodged beside b
            np.testing.assert_allclose(line.get_ydata(), expected[column])
            segments = np.array(bars.get_segments())
            np.testing.assert_allclose(segments[:, 0, 1], expected[f"{column}_low95"])
            np.testing.assert_allclose(segments[:, 1, 1], expected[f"{column}_high95"])
        reference = rows[rows["kind"] == "reference"].sort_values("bits")
        (dotted,) = [line for line in ax.lines if line.get_linestyle() == ":"]
        np.testing.assert_allclose(dotted.get_ydata(), reference["sqnr_db"])
        assert ax.get_xlabel() == "bits per weight"


def test_gap_table_reference_column_is_the_reference_minus_the_int_optimum(tmp_path):
    tables = synthetic_tables((bounds.SWEEP,))
    frame = tables[bounds.SWEEP]
    gaps = bounds.bound_gaps_frame(frame)
    assert len(gaps) == frame.groupby(["layer", "bits"]).ngroups
    for row in gaps.itertuples():
        at = frame[(frame["block"] == row.block) & (frame["role"] == row.role) & (frame["bits"] == row.bits)]
        value = at.set_index("method").groupby("family")["sqnr_db"]
        reference, exact = value.get_group("reference")["gaussian_rd"], value.get_group("quantization")["exact"]
        assert row.reference_minus_quant_db == pytest.approx(reference - exact, abs=1e-12)
    artifact = ARTIFACTS["bound_gaps"]
    rendered = render_artifact(artifact, tables, synthetic_facts(artifact), tmp_path)
    assert "RD $-$ INT" in rendered.files[0].read_text()
    assert "bootstrap over rows" in artifact.caption(tables, synthetic_facts(artifact))
