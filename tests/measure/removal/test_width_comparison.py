"""Width pruning beside BI removal and SparseGPT at equal size: sizes, refit pairs and the physically shrunk
model's perplexity, on a tiny model."""

from __future__ import annotations

import pytest
from tiny_inputs import token_batches
from tiny_models import tiny_model, tiny_tokenizer

from measure.capture.statistics import capture
from measure.compress.importance import importance_table, measure_importance
from measure.compress.remove import Removal, removed_fraction
from measure.compress.shrink.shrink import ShrinkSettings, shrink_model
from measure.evaluation.perplexity import evaluate_perplexity, make_windows
from measure.models.architecture import describe
from measure.removal.width import COLUMNS, nearest_removal, width_comparison_table
from theory.errors import PvqError

TEXT = " ".join(f"The {i % 13}th bell rang over {i % 7} quiet roofs." for i in range(300))


def _windows():
    return make_windows(TEXT, tiny_tokenizer(), 32, max_windows=2)


@pytest.fixture(scope="module")
def table():
    model = tiny_model("llama", num_hidden_layers=4)
    return width_comparison_table(model, token_batches(3, length=24), _windows(), ["mlp=0.25", "heads=0.5"],
                                  capture(model, token_batches(3, length=24)), batch_size=2)  # fmt: skip


def test_each_option_has_its_refit_pair_the_nearest_removal_and_sparsegpt_of_the_same_size(table) -> None:
    assert list(table.columns) == COLUMNS
    assert table.groupby("matched_to").size().to_dict() == {"mlp=0.25": 4, "heads=0.5": 4}
    for option, rows in table.groupby("matched_to"):
        rows = rows.set_index("method")
        series = "shrink_mlp" if option.startswith("mlp") else "shrink_heads"
        refit, plain = rows.loc[series], rows.loc[f"{series}_norefit"]
        assert refit["refit"] is True and plain["refit"] is False
        assert refit["removed_fraction"] == plain["removed_fraction"] == rows.loc["sparsegpt", "removed_fraction"]
        size = 16 * (1 - refit["removed_fraction"])
        assert rows.loc["sparsegpt", "bits_per_decoder_parameter"] == pytest.approx(size)
        removal = rows.loc["remove:bi"]
        assert removal["size_gap_bits"] == pytest.approx(removal["bits_per_decoder_parameter"] - size)
        assert 0 < rows.loc["sparsegpt", "sparsity"] < 1
        assert (rows["kl_to_reference_nats"] >= 0).all()


def test_shrink_rows_are_the_physically_shrunk_model(table) -> None:
    reference = tiny_model("llama", num_hidden_layers=4)
    for option, refit in (("mlp=0.25", True), ("heads=0.5", False)):
        settings = ShrinkSettings(**{option.split("=")[0]: float(option.split("=")[1])}, refit=refit)
        shrunk = shrink_model(tiny_model("llama", num_hidden_layers=4), token_batches(3, length=24), settings)
        direct = evaluate_perplexity(shrunk.model, _windows(), reference=reference)
        spec = f"shrink:{option}" + ("" if refit else ":norefit")
        row = table.set_index("spec").loc[spec]
        assert row["perplexity"] == pytest.approx(direct.perplexity, rel=1e-5)
        assert row["removed_fraction"] == pytest.approx(shrunk.removed_fraction, rel=1e-12)


def test_nearest_removal_takes_the_lowest_bi_blocks_of_nearest_size() -> None:
    model = tiny_model("llama", num_hidden_layers=4)
    arch = describe(model)
    importance = measure_importance(model, token_batches(3, length=24), arch)
    one = removed_fraction(arch, Removal(blocks=[0]))
    blocks, fraction = nearest_removal(arch, importance, 2.2 * one)
    assert len(blocks) == 2 and fraction == pytest.approx(2 * one)
    blocks_table = importance_table(importance).query("unit == 'block'")
    assert blocks == sorted(blocks_table.nsmallest(2, "influence")["block"].tolist())
    assert len(nearest_removal(arch, importance, 0.0)[0]) == 1


def test_a_norefit_option_is_refused_since_both_are_scored() -> None:
    model = tiny_model("llama", num_hidden_layers=2)
    with pytest.raises(PvqError, match="with and without refit"):
        width_comparison_table(
            model, token_batches(3, length=24), _windows(), ["mlp=0.25:norefit"],
            capture(model, token_batches(3, length=24)),
        )
