"""Removal study: the evaluator vs evaluate_perplexity, the answer table against direct readings, a tiny run."""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_inputs import token_batches
from tiny_models import tiny_model, tiny_tokenizer

from measure.capture.blocks import BlockInputs, record_block_inputs, run_block
from measure.capture.statistics import capture
from measure.compress.remove import remove_blocks, sublayer_removed
from measure.compress.shrink.shrink import ShrinkSettings, plan_shrink, shrink_model, zeroed_weights
from measure.compress.shrink.term import parse_shrink_term
from measure.evaluation.perplexity import evaluate_perplexity, make_windows
from measure.evaluation.residual import ResidualStreamEvaluator, first_windows
from measure.models.architecture import describe
from measure.removal.answer import answer_table
from measure.removal.equal_size import MAX_BRACKET_BITS, SIZE_TOLERANCE
from measure.removal.stacked import study_part
from measure.removal.study import StudySettings, check_settings, propagation_correlation, run_study
from theory.errors import PvqError

TEXT = " ".join(f"The {i % 17}th river runs past {i % 5} old mills." for i in range(400))


def _windows(count: int = 4):
    return make_windows(TEXT, tiny_tokenizer(), 48, max_windows=count)


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


def _points(view: str, rows: list[tuple[str, float, float]]) -> pd.DataFrame:
    """Curve points (series, bits per parameter, error) of one view with the study's columns."""
    return pd.DataFrame([{"view": view, "series": series, "family": "quantization", "term": f"{series}@{bits}",
                          "mask_convention": None, "bits_per_decoder_parameter": bits,
                          "bits_per_linear_weight": bits, "error": error, "quality_db": -10 * math.log10(error),
                          "perplexity": math.nan,
                          "mixed": False, "removed_fraction": math.nan, "size_gap_bits": math.nan}
                         for series, bits, error in rows])  # fmt: skip


def test_answer_table_reads_each_method_at_the_removal_size_and_inverts_its_curve() -> None:
    levels = pd.DataFrame([{"ordering": "bi", "removed": 1, "blocks": "3", "removed_fraction": 0.25,
                            "bits_per_decoder_parameter": 12.0, "bits_per_linear_weight": 12.0,
                            "removal_error_block": 0.01}])  # fmt: skip
    points = _points("block", [("rtn", 2.0, 0.5), ("rtn", 3.0, 0.1), ("rtn", 11.5, 1e-6), ("rtn", 12.5, 2.5e-7),
                               ("gptq", 2.0, 0.2), ("gptq", 3.0, 0.005), ("gptq", 4.0, 0.001)])  # fmt: skip
    row = answer_table(levels, points, ["block"], ["free"]).iloc[0]
    rtn_at_size = 0.5 * (60.0 + (-10 * math.log10(2.5e-7)))  # halfway between 11.5 and 12.5 bits, in dB
    assert row["removal_db"] == pytest.approx(20.0)
    assert (row["methods_at_size"], row["best_series"], row["interpolated"]) == (1, "rtn", "rtn")
    assert row["best_db"] == pytest.approx(rtn_at_size)
    assert row["margin_best_db"] == pytest.approx(20 - rtn_at_size)
    # the removal's 20 dB lies between RTN's 3 and 11.5 bits: more than one bit apart, so no value, never guessed
    assert math.isnan(row["equivalent_bits_rtn"]) and row["equivalent_bits_rtn_censored"] == "gap"
    gptq_db = [-10 * math.log10(0.2), -10 * math.log10(0.005)]
    assert row["equivalent_bits_gptq"] == pytest.approx(2.0 + (20.0 - gptq_db[0]) / (gptq_db[1] - gptq_db[0]))
    assert row["equivalent_bits_gptq_censored"] == "" and math.isnan(row["rd_db"])


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


TINY_SETTINGS = StudySettings(
    max_removed=2, probe_windows=1, batch_size=2, groups=("g128", "channel"), pruners=("sparsegpt",),
    quantizer_bits={"rtn": (2, 3, 4, 8, 11, 12, 13, 14, 15, 16), "gptq": (2, 4, 7, 8)}, workers=1,
    widths=("mlp=0.25", "mlp=0.5:heads=0.5:norefit"),
)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_study() -> tuple:
    model = tiny_model("llama", num_hidden_layers=4)
    ids = _windows().input_ids[:1]
    with torch.no_grad():
        before = model(ids).logits
    published: list[str] = []
    study = run_study(model, token_batches(1, length=24), _windows(2), TINY_SETTINGS,
                      on_table=lambda name, _: published.append(name))  # fmt: skip
    with torch.no_grad():
        after = model(ids).logits
    return study, published, before, after


def test_run_study_on_a_tiny_model_leaves_it_unchanged(tiny_study) -> None:
    study, published, before, after = tiny_study
    assert published == list(study.tables)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    levels = study.tables["levels"]
    assert len(levels) == len(TINY_SETTINGS.orderings) * TINY_SETTINGS.max_removed
    assert levels["bits_per_decoder_parameter"].tolist()[:2] == [pytest.approx(12.0), pytest.approx(8.0)]
    single = study.tables["single_units"]
    assert single.groupby("unit").size().to_dict() == {"attention": 4, "block": 4, "mlp": 4}
    answer = study.tables["answer"]
    assert len(answer) == 4 * len(levels) * len(TINY_SETTINGS.mask_conventions)
    assert set(study.summary) >= {"base", "correlation_single_block", "correlation_levels_block", "seconds"}


def test_every_method_at_the_removal_size_sits_there_or_between_widths_one_bit_apart(tiny_study) -> None:
    """In every view a quantizer at b(f) is the model spliced row by row from the two widths that bracket it (never
    an interpolation); a pruner sits at b(f) exactly."""
    study = tiny_study[0]
    points, answer = study.tables["points"], study.tables["answer"]
    local = answer[answer["view"] != "end_to_end"]
    for row in local.itertuples():
        assert row.interpolated == ""
        rows = points[(points["view"] == row.view) & ~points["mixed"]
                      & (points["mask_convention"].isna() | (points["mask_convention"] == row.mask_convention))]
        at_size = 0
        for series, curve in rows[rows["family"] != "reference"].groupby("series"):
            bits = np.sort(curve["bits_per_decoder_parameter"].to_numpy())
            exact = np.abs(bits - row.bits_per_decoder_parameter) <= SIZE_TOLERANCE
            below, above = bits[bits < row.bits_per_decoder_parameter], bits[bits > row.bits_per_decoder_parameter]
            bracketed = len(below) and len(above) and above[0] - below[-1] <= MAX_BRACKET_BITS
            at_size += bool(exact.any() or bracketed)
            if bracketed and not exact.any():
                spliced = points[points["mixed"] & (points["view"] == row.view) & (points["series"] == series)
                                 & np.isclose(points["removed_fraction"], row.removed_fraction)]  # fmt: skip
                assert len(spliced) == 1, (series, row.view, row.bits_per_decoder_parameter)
            if curve["family"].iloc[0] == "pruning":
                assert exact.any(), (series, row.bits_per_decoder_parameter)
        assert at_size == row.methods_at_size
    mixed = points[points["mixed"]]
    assert len(mixed) and (mixed["size_gap_bits"].abs() < 0.01).all()
    for point in mixed.itertuples():
        low, high = (int(b) for b in point.term.split(":")[1].split("@")[0].split("|"))
        assert high == low + 1


def test_rd_reference_of_the_layer_view_aggregates_the_per_layer_values(tiny_study) -> None:
    tables = tiny_study[0].tables
    layers, per_layer, points = tables["layers"], tables["layer_rd"], tables["points"]
    for bits, rows in per_layer.groupby("bits_per_linear_weight"):
        merged = rows.merge(layers, on="layer")
        energy = (merged["rd_relative_error"] * merged["output_energy"]).sum() / merged["output_energy"].sum()
        parameters = (merged["rd_relative_error"] * merged["parameters"]).sum() / merged["parameters"].sum()
        reference = points[(points["series"] == "gaussian_rd") & (points["bits_per_linear_weight"] == bits)]
        assert reference.set_index("view").loc["layer_energy", "error"] == pytest.approx(energy, rel=1e-12)
        assert reference.set_index("view").loc["layer_parameters", "error"] == pytest.approx(parameters, rel=1e-12)
    assert sorted(per_layer["bits_per_linear_weight"].unique()) == list(range(2, 17))


def test_layer_view_of_removal_equals_its_parameter_share_whichever_blocks_go(tiny_study) -> None:
    levels = tiny_study[0].tables["levels"]
    layers = tiny_study[0].tables["layers"]
    for row in levels.itertuples():
        removed = [int(b) for b in row.blocks.split(",")]
        share = layers[layers["block"].isin(removed)]["parameters"].sum() / layers["parameters"].sum()
        assert row.removal_error_layer_parameters == pytest.approx(share, rel=1e-15)
        assert row.removal_error_layer_parameters == pytest.approx(row.removed_fraction, rel=1e-3)


@pytest.mark.parametrize(("change", "message"), [
    ({"views": ("block", "residual")}, "unknown view 'residual'"),
    ({"mask_conventions": ("gzip",)}, "unknown mask convention 'gzip'"),
    ({"quantizer_bits": {"rtn": (1, 4), "gptq": (4,)}}, "bits must be an integer in 2..16"),
    ({"quantizer_bits": {"rtn": (4, 17), "gptq": (4,)}}, "bits must be an integer in 2..16"),
    ({"max_removed": 4}, "max_removed must lie in 1..3"),
    ({"widths": ("mlp=1.5",)}, "fraction removed"),
    ({"widths": ("depth=0.5",)}, "unknown shrink token 'depth=0.5'"),
])
def test_bad_study_settings_are_one_clear_error_each(change: dict, message: str) -> None:
    settings = StudySettings(**{**TINY_SETTINGS.__dict__, **change})
    with pytest.raises(PvqError, match=message):
        check_settings(settings, blocks=4)


def test_width_pruning_points_are_the_physically_shrunk_model_in_every_view(tiny_study) -> None:
    study = tiny_study[0]
    points, layers = study.tables["points"], study.tables["layers"]
    model = tiny_model("llama", num_hidden_layers=4)
    arch = describe(model)
    batches = list(torch.cat(token_batches(1, length=24)).split(TINY_SETTINGS.batch_size))
    inputs = record_block_inputs(model, arch, batches)
    states = [inputs.hidden]
    for block in arch.blocks:
        states.append(run_block(arch, block.index, BlockInputs(states[-1], inputs.kwargs)))
    update = sum(float((y - x).pow(2).sum()) for xs, ys in itertools.pairwise(states)
                 for x, y in zip(xs, ys, strict=True))  # fmt: skip
    for option, series in (("mlp=0.25", "shrink_mlp"), ("mlp=0.5:heads=0.5:norefit", "shrink_mlp+heads_norefit")):
        rows = points[points["term"] == f"shrink:{option}"].set_index("view")
        assert set(rows.index) == set(TINY_SETTINGS.views) and set(rows["series"]) == {series}
        assert set(rows["family"]) == {"width"}
        settings = ShrinkSettings(**parse_shrink_term(tuple(option.split(":"))))
        shrunk = shrink_model(tiny_model("llama", num_hidden_layers=4), token_batches(1, length=24), settings)
        size = 16 * (1 - shrunk.removed_fraction)
        assert rows["bits_per_decoder_parameter"].iloc[0] == pytest.approx(size, rel=1e-12)
        assert rows["removed_fraction"].iloc[0] == pytest.approx(shrunk.removed_fraction, rel=1e-12)
        small = describe(shrunk.model)
        error = sum(float((run_block(small, i, BlockInputs(states[i], inputs.kwargs))[k] - y).pow(2).sum())
                    for i in range(4) for k, y in enumerate(states[i + 1]))  # fmt: skip
        assert rows.loc["block", "error_in_sample"] == pytest.approx(error / update, rel=1e-4)
        direct = evaluate_perplexity(shrunk.model, _windows(2), reference=model)
        assert rows.loc["end_to_end", "perplexity"] == pytest.approx(direct.perplexity, rel=1e-5)
        assert rows.loc["end_to_end", "error"] == pytest.approx(direct.kl_to_reference_nats, rel=1e-3, abs=1e-7)
        consumers = shrunk.units.set_index("unit")
        down = consumers.loc[[f"model.layers.{b}.mlp" for b in range(4)]]
        expected = (down["refit_error"] if settings.refit else down["unrefit_error"]) / down["signal"]
        per_layer = _width_layer_errors(model, option)
        for block, value in enumerate(expected):
            assert per_layer[f"model.layers.{block}.mlp.down_proj"] == pytest.approx(value, rel=1e-4)
        assert rows.loc["layer_parameters", "error_in_sample"] == pytest.approx(
            (layers["layer"].map(per_layer) * layers["parameters"]).sum() / layers["parameters"].sum(), rel=1e-5)
    answer_columns = " ".join(study.tables["answer"].columns)
    assert "shrink" not in answer_columns
    end_to_end = study.tables["end_to_end"]
    methods = set(end_to_end.loc[end_to_end["family"] == "width", "method"])
    assert methods == {"shrink_mlp", "shrink_mlp+heads_norefit"}


def _width_layer_errors(model: torch.nn.Module, option: str) -> dict[str, float]:
    """Per layer tr(ΔW H ΔWᵀ) / tr(W H Wᵀ) of the study's width term, from a fresh capture of the study batches."""
    arch = describe(model)
    captured = capture(model, token_batches(1, length=24), arch=arch)
    settings = ShrinkSettings(**parse_shrink_term(tuple(option.split(":"))))
    grams = {ref.name: captured.gram_for(ref.name).to_numpy() for ref in arch.linears}
    zeroed = zeroed_weights(plan_shrink(model, (), settings, grams))
    errors = {}
    for ref in arch.linears:
        weight = ref.weight().double()
        gram = captured.gram_for(ref.name).gram
        change = zeroed.get(ref.name, ref.weight()).double() - weight
        errors[ref.name] = float(torch.trace(change @ gram @ change.T) / torch.trace(weight @ gram @ weight.T))
    return errors


@pytest.fixture
def tiny_source(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """A saved 3-block tiny Llama with its tokenizer; calibration and evaluation text replaced by ``TEXT``."""
    source = tmp_path / "tiny"
    tiny_model("llama", num_hidden_layers=3).save_pretrained(source)
    tiny_tokenizer().save_pretrained(source)
    monkeypatch.setattr("measure.data.text.calibration_text", lambda: TEXT)
    monkeypatch.setattr("measure.data.text.evaluation_text", lambda: TEXT[::-1])
    return source


def test_pvq_remove_study_writes_every_table_stacked_as_the_figures_do(tmp_path, tiny_source, capsys) -> None:
    from measure.records.store import read_provenance, read_table
    from pvq.cli import main

    source = tiny_source
    out = tmp_path / "study"
    assert main(["remove", "--model", str(source), "--study", "--out", str(out), "--sequences", "2", "--seq-len",
                 "24", "--eval-windows", "2", "--window", "32", "--max-removed", "1", "--probe-windows", "1",
                 "--batch-size", "2", "--bits", "2,3,4", "--pruner", "magnitude"]) == 0  # fmt: skip
    names = {"width_options", "units", "angular", "single_units", "layers", "blocks", "layer_rd", "levels",
             "points", "answer", "end_to_end", "view_shares", "base"}
    assert [path.name for path in out.glob("*.parquet")] == ["removal_study.parquet"]
    stacked = read_table(out / "removal_study.parquet")
    assert set(stacked["table"]) == names - {"width_options"}  # no width asked: the part has no rows
    assert len(study_part(stacked, "levels")) == 4
    assert "perplexity" in study_part(stacked, "base")
    provenance = read_provenance(out / "removal_study.parquet")
    assert provenance["settings"]["max_removed"] == 1 and set(provenance["parts"]) == names
    printed = capsys.readouterr().out
    assert "Block Influence ranking" in printed and "exactly equal size" in printed


@pytest.mark.parametrize(("flags", "message"), [
    (["--views", "residual"], "unknown view 'residual'"),
    (["--mask-conventions", "gzip"], "unknown mask convention 'gzip'"),
    (["--bits", "2-17"], "bits must be an integer in 2..16"),
    (["--max-removed", "3"], "max_removed must lie in 1..2"),
])
def test_pvq_remove_study_refuses_bad_input_and_writes_nothing(
    tmp_path, tiny_source, capsys, flags: list[str], message: str
) -> None:
    from pvq.cli import main

    out = tmp_path / "study"
    code = main(["remove", "--model", str(tiny_source), "--study", "--out", str(out), "--sequences", "2",
                 "--seq-len", "24", "--eval-windows", "2", "--window", "32", *flags])  # fmt: skip
    assert code != 0
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_unit_table_counts_each_units_parameters_and_ranks_by_influence() -> None:
    from measure.compress.importance import measure_importance
    from measure.removal.study import unit_table

    model = tiny_model("llama", num_hidden_layers=4)
    arch = describe(model)
    table = unit_table(measure_importance(model, token_batches(1, length=24), arch), arch)
    decoder = sum(p.numel() for p in model.model.layers.parameters())
    for row in table.itertuples():
        layer = model.model.layers[row.block]
        modules = {"block": [layer], "attention": [layer.self_attn, layer.input_layernorm],  # a sublayer goes
                   "mlp": [layer.mlp, layer.post_attention_layernorm]}[row.unit]  # with its input norm
        parameters = sum(p.numel() for module in modules for p in module.parameters())
        assert row.parameters == parameters
        assert row.removed_fraction == pytest.approx(parameters / decoder, rel=1e-12)
        assert row.bits_per_decoder_parameter == pytest.approx(16 * (1 - parameters / decoder), rel=1e-12)
    for _, rows in table.groupby("unit"):
        assert list(rows.sort_values("influence")["rank"]) == list(range(len(rows)))
