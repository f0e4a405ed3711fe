"""Per-layer bounds: lower <= exact <= heuristics per chunk, the aggregate and its interval equal direct
computations over full-row signals, the Gaussian reference, errors."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from tiny_models import tiny_model, tiny_tokenizer

from measure.bounds import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    COLUMNS,
    REFERENCE,
    aggregate_records,
    bounds_for_model,
    layer_bounds,
    row_bootstrap_db,
    select_rows,
    solve_chunks,
)
from theory.accounting import Convention
from theory.errors import PvqError
from theory.rate_distortion import rd_sqnr_db

TOLERANCE = 1e-9


def _layer(out_features: int = 5, in_features: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    inputs = rng.standard_normal((64, in_features)) @ (np.eye(in_features) + 0.4 * rng.standard_normal(
        (in_features, in_features)))
    return rng.standard_normal((out_features, in_features)), inputs.T @ inputs


def _damped(gram: np.ndarray) -> np.ndarray:
    return gram + 0.01 * np.mean(np.diag(gram)) * np.eye(gram.shape[0])


@pytest.fixture(scope="module")
def records() -> list:
    weight, gram = _layer()
    return solve_chunks(weight, gram, bits=3, opt_dim=6, rows=3, max_chunks=2, time_limit=30.0, seed=1)


@pytest.fixture(scope="module")
def all_chunks() -> list:
    weight, gram = _layer()
    return solve_chunks(weight, gram, bits=3, opt_dim=6, rows=4, time_limit=30.0, seed=2)


def test_selected_rows_are_a_seeded_distinct_subset_and_only_the_first_chunks_are_solved(records) -> None:
    rows = select_rows(5, 3, seed=1)
    assert rows == sorted(set(rows)) and len(rows) == 3 and rows == select_rows(5, 3, seed=1)
    assert {record.row for record in records} == set(rows)
    assert {(record.chunk.start, record.chunk.stop) for record in records} == {(0, 6), (6, 12)}


def test_per_chunk_order_lower_bounds_then_exact_then_heuristics(records) -> None:
    chunks: dict[tuple, dict[str, object]] = {}
    for record in records:
        key = (record.row, record.chunk.start, record.family)
        chunks.setdefault(key, {})[record.result.method] = record.result
    assert len(chunks) == 3 * 2 * 2
    for (_, _, family), results in chunks.items():
        exact = results.pop("exact")
        bound = results.pop("park_boyd" if family == "quantization" else "perspective")
        assert exact.status == "optimal"
        assert bound.lower_bound <= exact.value * (1 + TOLERANCE)
        assert len(results) == (2 if family == "quantization" else 6)
        for result in [bound, *results.values()]:
            assert exact.value <= result.value * (1 + TOLERANCE), result.method


def test_chunk_error_is_the_row_error_with_the_rest_of_the_row_unchanged(records) -> None:
    weight, gram = _layer()
    damped = _damped(gram)
    for record in records:
        row = weight[record.row].copy()
        row[record.chunk] = record.result.solution
        difference = row - weight[record.row]
        assert difference @ damped @ difference == pytest.approx(record.result.value, rel=1e-9, abs=1e-12)


def test_every_record_carries_the_full_output_energy_of_its_row(records) -> None:
    weight, gram = _layer()
    damped = _damped(gram)
    for record in records:
        assert record.signal == pytest.approx(weight[record.row] @ damped @ weight[record.row], rel=1e-12)


def test_with_every_chunk_measured_the_sqnr_is_row_energy_over_summed_chunk_errors(all_chunks) -> None:
    weight, gram = _layer()
    damped = _damped(gram)
    frame = aggregate_records(all_chunks).set_index(["family", "method"])
    rows = select_rows(5, 4, seed=2)
    signal = sum(weight[row] @ damped @ weight[row] for row in rows)
    for family, method in [("quantization", "gptq"), ("pruning", "exact"), ("pruning", "wanda+refit")]:
        chosen = [r for r in all_chunks if r.family == family and r.result.method == method]
        assert {(r.row, r.chunk.start) for r in chosen} == {(row, start) for row in rows for start in (0, 6, 12)}
        error = sum((r.result.solution - weight[r.row, r.chunk]) @ damped[r.chunk, r.chunk]
                    @ (r.result.solution - weight[r.row, r.chunk]) for r in chosen)
        assert frame.loc[(family, method), "sqnr_db"] == pytest.approx(10 * math.log10(signal / error), abs=1e-9)
        assert frame.loc[(family, method), "chunks"] == 12 and frame.loc[(family, method), "rows"] == 4
    exact = frame.loc[("quantization", "exact")]
    assert exact["status"] == "optimal" and exact["gap"] == pytest.approx(0.0, abs=1e-12)
    assert exact["sqnr_upper_db"] == pytest.approx(exact["sqnr_db"])
    assert math.isnan(frame.loc[("pruning", "magnitude"), "sqnr_upper_db"])
    perspective = frame.loc[("pruning", "perspective"), "sqnr_upper_db"]
    assert perspective >= frame.loc[("pruning", "exact"), "sqnr_db"] - 1e-6


def test_row_interval_is_a_bootstrap_of_the_energy_weighted_ratio(all_chunks) -> None:
    weight, gram = _layer()
    damped = _damped(gram)
    frame = aggregate_records(all_chunks).set_index(["family", "method"])
    chosen = [r for r in all_chunks if r.family == "quantization" and r.result.method == "rtn"]
    rows = sorted({r.row for r in chosen})
    signals = np.array([weight[row] @ damped @ weight[row] for row in rows])
    errors = np.array([sum(r.result.value for r in chosen if r.row == row) for row in rows])
    generator = np.random.default_rng(BOOTSTRAP_SEED)
    ratios = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        draw = generator.integers(0, len(rows), size=len(rows))
        ratios.append(errors[draw].sum() / signals[draw].sum())
    low, high = np.quantile(ratios, [0.025, 0.975])
    rtn = frame.loc[("quantization", "rtn")]
    assert rtn["sqnr_db_low95"] == pytest.approx(-10 * math.log10(high), abs=1e-9)
    assert rtn["sqnr_db_high95"] == pytest.approx(-10 * math.log10(low), abs=1e-9)
    assert rtn["sqnr_db_low95"] <= rtn["sqnr_db"] <= rtn["sqnr_db_high95"]
    assert math.isnan(rtn["sqnr_upper_db_low95"])
    bound = frame.loc[("quantization", "park_boyd")]
    assert bound["sqnr_upper_db_low95"] <= bound["sqnr_upper_db"] <= bound["sqnr_upper_db_high95"]


def test_rows_with_equal_relative_error_give_a_zero_width_interval() -> None:
    signals = np.array([1.0, 4.0, 2.5])
    low, high = row_bootstrap_db(signals, 0.01 * signals)
    assert low == pytest.approx(20.0, abs=1e-9) and high == pytest.approx(20.0, abs=1e-9)


def test_layer_reference_is_the_gaussian_rate_distortion_sqnr_of_all_rows() -> None:
    weight, gram = _layer()
    frame = layer_bounds(weight, gram, bits=3, opt_dim=8, rows=2, max_chunks=1, sdp=False)
    assert list(frame.columns) == list(COLUMNS)
    reference = frame.set_index(["family", "method"]).loc[REFERENCE]
    eigenvalues, eigenvectors = np.linalg.eigh(_damped(gram))
    spectrum = eigenvalues * ((weight @ eigenvectors) ** 2).mean(axis=0)  # λ_j · mean over rows of (v_jᵀw)²
    assert reference["sqnr_db"] == pytest.approx(rd_sqnr_db(spectrum, 3), abs=1e-9)
    assert reference["kind"] == "reference" and reference["rows"] == 5 and reference["chunks"] == 0


def test_layer_bounds_without_sdp_lists_every_method_once() -> None:
    weight, gram = _layer()
    frame = layer_bounds(weight, gram, bits=2, opt_dim=8, rows=2, max_chunks=1, sdp=False)
    assert sorted(frame["method"]) == sorted(["exact", "rtn", "gptq", "exact", "magnitude", "wanda", "sparsegpt",
                                              "magnitude+refit", "wanda+refit", "sparsegpt+refit", "gaussian_rd"])
    assert (frame.loc[frame["kind"] != "reference", "chunks"] == 2).all()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"opt_dim": 17}, "opt-dim 17 is larger"),
    ({"bits": 1}, "bits must be an integer"),
    ({"bits": 9}, "bits must be an integer"),
    ({"rows": 6}, "rows must be an integer in 1..5"),
    ({"max_chunks": 0}, "max_chunks"),
    ({"bits": 4, "convention": Convention(base_bits=4.0)}, "number of kept weights"),
])  # fmt: skip
def test_bad_input_raises_one_clear_error(kwargs: dict, message: str) -> None:
    weight, gram = _layer()
    arguments = {"bits": 3, "opt_dim": 8, "rows": 2, "max_chunks": 1, "sdp": False, **kwargs}
    with pytest.raises(PvqError, match=message):
        layer_bounds(weight, gram, **arguments)


def _tiny_loaded() -> SimpleNamespace:
    return SimpleNamespace(model=tiny_model("llama"), tokenizer=tiny_tokenizer(), bos_per_window=False)


def test_bounds_for_model_runs_per_layer_and_bits_and_rejects_unknown_layers() -> None:
    loaded = _tiny_loaded()
    with pytest.raises(PvqError, match=r"no linear layer called model\.layers\.9\.mlp\.up_proj"):
        bounds_for_model(loaded, ["model.layers.9.mlp.up_proj"], [4])
    layers = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
    frame = bounds_for_model(loaded, layers, [2, 4], opt_dim=8, rows=2, max_chunks=1, sdp_bits=[4], sequences=2,
                             sequence_length=32, batch_size=2, sdp_layers=layers[1:])  # fmt: skip
    assert set(frame["layer"]) == set(layers) and set(frame["bits"]) == {2, 4}
    sdp = frame[frame["method"] == "park_boyd"]
    assert set(sdp["bits"]) == {4} and set(sdp["layer"]) == set(layers[1:])
    assert set(frame["role"]) == {"q", "down"}
    assert len(frame[frame["kind"] == "reference"]) == 4
    for _, rows in frame[frame["kind"] != "reference"].groupby(["layer", "bits", "family"]):
        values = rows.set_index("method")["sqnr_db"]
        assert (values.drop("exact") <= values["exact"] + 1e-9).all()
