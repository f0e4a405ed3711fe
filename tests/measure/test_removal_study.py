"""Removal study: evaluator vs evaluate_perplexity, aggregation and verdicts on synthetic tables, a tiny run."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_models import tiny_model, tiny_tokenizer

from measure.architecture import describe
from measure.capture import BlockStatistics
from measure.evaluation.perplexity import evaluate_perplexity, make_windows
from measure.removal import remove_blocks, sublayer_removed
from measure.removal_study import (
    ResidualStreamEvaluator,
    StudySettings,
    aggregate_layer_errors,
    equal_compression,
    first_windows,
    matched_points,
    propagation_correlation,
    removal_set_error,
    run_study,
    verdict,
    verdict_table,
)
from theory.errors import PvqError

TEXT = " ".join(f"The {i % 17}th river runs past {i % 5} old mills." for i in range(400))


def _windows(count: int = 4):
    return make_windows(TEXT, tiny_tokenizer(), 48, max_windows=count)


def _batches() -> list[torch.Tensor]:
    return list(torch.randint(3, 300, (4, 24), generator=torch.Generator().manual_seed(1)).split(2))


def test_evaluator_equals_evaluate_perplexity_of_the_removed_model() -> None:
    model = tiny_model("llama", num_hidden_layers=5)
    windows = _windows()
    evaluator = ResidualStreamEvaluator(model, windows, batch_size=3)
    removed = copy.deepcopy(model)
    remove_blocks(removed, [1, 3])
    direct = evaluate_perplexity(removed, windows, reference=model)
    cached = evaluator.evaluate([1, 3])
    assert cached.n_tokens == direct.n_tokens
    assert cached.perplexity == pytest.approx(direct.perplexity, rel=1e-6)
    assert cached.kl_to_reference_nats == pytest.approx(direct.kl_to_reference_nats, rel=1e-4)
    base = evaluator.evaluate()
    assert base.perplexity == pytest.approx(evaluate_perplexity(model, windows).perplexity, rel=1e-6)
    assert abs(base.kl_to_reference_nats) < 1e-6
    arch = describe(model)
    with sublayer_removed(arch, "mlp", 2):
        ablated = evaluate_perplexity(model, windows).perplexity
        assert evaluator.evaluate(start=2).perplexity == pytest.approx(ablated, rel=1e-6)
    with pytest.raises(PvqError, match=r"start block 3 must lie in 0\.\.1"):
        evaluator.evaluate([1], start=3)


def test_aggregation_is_energy_weighted_over_layers() -> None:
    table = pd.DataFrame({
        "layer": ["a", "b", "c", "d"] * 2, "block": [0, 0, 1, 1] * 2, "sublayer": ["attention", "mlp"] * 4,
        "method": ["rtn"] * 4 + ["sparsegpt"] * 4, "term": ["rtn:4"] * 4 + ["sparsegpt:0.5"] * 4,
        "bits_per_weight": [4.0, 4.0, 4.5, 4.5, 8.0, 8.0, 8.0, 8.0], "parameters": [1, 3, 1, 3] * 2,
        "relative_error": [0.1, 0.01, 0.2, 0.02, 0.3, 0.03, 0.4, 0.04],
    })  # fmt: skip
    energy = pd.DataFrame({"layer": ["a", "b", "c", "d"], "output_energy": [1.0, 9.0, 2.0, 8.0]})
    model_level = aggregate_layer_errors(table, energy).set_index("term")
    expected = (0.1 * 1 + 0.01 * 9 + 0.2 * 2 + 0.02 * 8) / 20
    assert model_level.loc["rtn:4", "relative_error"] == pytest.approx(expected)
    assert model_level.loc["rtn:4", "output_sqnr_db"] == pytest.approx(-10 * math.log10(expected))
    assert model_level.loc["rtn:4", "bits_per_weight"] == pytest.approx((4 + 12 + 4.5 + 13.5) / 8)
    per_block = aggregate_layer_errors(table, energy, by=("block",)).set_index(["term", "block"])
    assert per_block.loc[("sparsegpt:0.5", 1), "relative_error"] == pytest.approx((0.4 * 2 + 0.04 * 8) / 10)
    with pytest.raises(PvqError, match="lacks columns"):
        aggregate_layer_errors(table.drop(columns="relative_error"), energy)
    with pytest.raises(PvqError, match="no layer of the per-layer table"):
        aggregate_layer_errors(table, energy.assign(layer=["x", "y", "z", "w"]))


def test_matched_points_and_verdicts() -> None:
    curves = pd.DataFrame({
        "method": ["rtn", "rtn", "rtn", "sparsegpt", "sparsegpt"], "term": ["r2", "r4", "r8", "s50", "s25"],
        "bits_per_weight": [2.1, 4.1, 8.1, 8.0, 12.0], "output_sqnr_db": [5.0, 18.0, 42.0, 12.0, 20.0],
    })  # fmt: skip
    points = matched_points(curves, 10.0)
    assert sorted(points["term"]) == ["r8", "s50"]
    assert sorted(matched_points(curves, 12.005)["term"]) == ["r8", "s25"]
    assert matched_points(curves, 2.0).empty
    below, inside, above = (verdict(value, points) for value in (5.0, 30.0, 50.0))
    assert (below["verdict"], below["margin_db"], below["range_low_term"]) == ("below", pytest.approx(-7.0), "s50")
    assert (inside["verdict"], inside["margin_db"]) == ("inside", 0.0)
    assert (above["verdict"], above["margin_db"], above["range_high_term"]) == ("above", pytest.approx(8.0), "r8")
    assert verdict(5.0, matched_points(curves, 2.0))["verdict"] == "no comparison"
    levels = pd.DataFrame({"bits_per_weight": [10.0, 12.0, 4.5], "removal_sqnr_db": [5.0, 30.0, 19.0]})
    table = verdict_table(levels, curves)
    assert table["verdict"].tolist() == ["below", "inside", "above"]
    assert table["range_low_db"].tolist() == [12.0, 20.0, 18.0]


def test_equal_compression_mapping_and_removal_set_error() -> None:
    assert equal_compression(0.25) == {"removed_fraction": 0.25, "bits_per_weight": 12.0, "sparsity": 0.25}
    with pytest.raises(PvqError, match="removed fraction must lie in"):
        equal_compression(1.0)
    blocks = [BlockStatistics(i, tokens=1, output_energy=e, identity_error=d)
              for i, (e, d) in enumerate([(10.0, 1.0), (20.0, 4.0), (30.0, 3.0)])]  # fmt: skip
    assert removal_set_error(blocks, [0, 2]) == pytest.approx(4.0 / 60.0)


def test_propagation_correlation() -> None:
    local = np.array([1e-3, 1e-2, 3e-2, 1e-1])
    result = propagation_correlation(local, 5 * local**2)
    assert result == {"pearson_log10": pytest.approx(1.0), "spearman": pytest.approx(1.0), "n": 4}
    assert propagation_correlation(local, -local)["n"] == 0
    assert math.isnan(propagation_correlation(local[:2], local[:2])["spearman"])


def test_first_windows_keeps_a_consistent_protocol() -> None:
    windows = _windows()
    first = first_windows(windows, 2)
    assert first.input_ids.shape[0] == 2 and first.protocol.max_windows == 2
    assert first.protocol.windows_sha256 != windows.protocol.windows_sha256
    with pytest.raises(PvqError, match="asked for 9 evaluation windows"):
        first_windows(windows, 9)


def test_run_study_on_a_tiny_model_leaves_it_unchanged() -> None:
    model = tiny_model("llama", num_hidden_layers=4)
    ids = _windows().input_ids[:1]
    with torch.no_grad():
        before = model(ids).logits
    settings = StudySettings(max_removed=2, probe_windows=1, ledger_bits=(4, 8), batch_size=2)
    published: list[str] = []
    study = run_study(model, _batches(), _windows(2), settings, on_table=lambda name, _: published.append(name))
    assert published == list(study.tables)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=0)
    levels = study.tables["levels"]
    assert len(levels) == len(settings.orderings) * settings.max_removed
    assert levels["bits_per_weight"].tolist()[:2] == [pytest.approx(12.0), pytest.approx(8.0)]
    assert set(levels["verdict"]) <= {"inside", "below", "above"}
    single = study.tables["single_units"]
    assert single.groupby("unit").size().to_dict() == {"attention": 4, "block": 4, "mlp": 4}
    end_to_end = study.tables["end_to_end"]
    compression = end_to_end[end_to_end["family"] == "compression"]
    assert set(compression["method"]) == {"sparsegpt", "rtn", "gptq"}
    assert (compression["bits_per_weight"] <= 12.0 + 0.01).all()
    assert set(study.summary) >= {"base", "correlation_single_block", "correlation_levels", "seconds"}


def test_pvq_remove_study_writes_every_table(tmp_path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from measure.cli import main
    from measure.store import read_provenance, read_table

    source = tmp_path / "tiny"
    tiny_model("llama", num_hidden_layers=3).save_pretrained(source)
    tiny_tokenizer().save_pretrained(source)
    monkeypatch.setattr("measure.text.calibration_text", lambda: TEXT)
    monkeypatch.setattr("measure.text.evaluation_text", lambda: TEXT[::-1])
    out = tmp_path / "study"
    assert main(["remove", "--model", str(source), "--study", "--out", str(out), "--sequences", "2", "--seq-len",
                 "24", "--eval-windows", "2", "--window", "32", "--max-removed", "1", "--probe-windows", "1",
                 "--batch-size", "2"]) == 0  # fmt: skip
    names = {"units", "angular", "single_units", "curves", "block_verdicts", "levels", "end_to_end"}
    assert {path.stem for path in out.glob("*.parquet")} == names
    assert len(read_table(out / "levels.parquet")) == 4
    assert read_provenance(out / "levels.parquet")["settings"]["max_removed"] == 1
    printed = capsys.readouterr().out
    assert "Block Influence ranking" in printed and "Verdict per removal level" in printed
