"""The ledger: Gram-based errors equal direct errors on the captured inputs, tidy columns, CLI, clear errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from tiny_inputs import token_batches
from tiny_models import tiny_model, tiny_tokenizer

from measure import ledger
from measure.capture.statistics import capture
from measure.compress.apply import layer_gram
from measure.compress.methods.metrics import LayerErrorMeter, output_error
from measure.compress.spec import parse_spec
from measure.data import text
from measure.data.calibration import CalibrationProtocol, text_batches
from measure.ledger import LEDGER_COLUMNS, build_ledger, weight_tensor_study
from measure.models import load as models
from measure.models.architecture import describe
from measure.records.store import read_provenance, read_table
from pvq import cli
from theory.errors import PvqError

METHODS = "magnitude:0.5,wanda:2:4,sparsegpt:0.5,rtn:3:channel,gptq:4:g16,nf4,mxfp4,moe_pruner:0.5"
TEXT = "The history of the calibration text is long, and it is real English prose. " * 40


def _direct_relative_error(x: torch.Tensor, weight: torch.Tensor, weight_hat: torch.Tensor) -> float:
    """‖X(Ŵ − W)ᵀ‖²_F / ‖XWᵀ‖²_F on explicit input rows, float64."""
    w, w_hat = weight.double(), weight_hat.double()
    return float(((x @ (w_hat - w).T) ** 2).sum() / ((x @ w.T) ** 2).sum())


@pytest.mark.parametrize("family", ["llama", "gpt2", "mixtral"])
def test_gram_errors_equal_direct_errors_on_the_kept_rows(family: str) -> None:
    model = tiny_model(family).double() if family != "mixtral" else tiny_model(family)
    result = build_ledger(model, token_batches(4), METHODS, keep_rows=10_000)
    refs = {ref.name: ref for ref in describe(model).linears}
    assert set(result.table["layer"]) == {name for name, ref in refs.items() if ref.sublayer_kind != "router"}
    assert len(result.table) == result.table["layer"].nunique() * len(METHODS.split(","))
    tolerance = 1e-9 if family != "mixtral" else 1e-5  # float64 model: exact; float32 experts: float32 Grams
    for row in result.table.itertuples():
        ref = refs[row.layer]
        gram = layer_gram(ref, result.capture.grams, result.experts)
        assert gram.sample.shape[0] == gram.tokens == row.tokens
        (step,) = parse_spec(row.term).steps
        method_gram = layer_gram(ref, result.capture.grams, result.experts, weighted=row.gram == "router_weighted")
        matrix = method_gram.gram if step.method.needs_gram else None
        weight_hat = step.method.apply(ref.weight(), matrix, step.params)
        direct = _direct_relative_error(gram.sample, ref.weight(), weight_hat)
        assert row.relative_error == pytest.approx(direct, rel=tolerance), (row.layer, row.term)
        assert row.sqnr_db == pytest.approx(-10 * math.log10(direct), abs=1e-4)
    assert set(result.table.loc[result.table["sublayer"] == "expert", "tokens"]) != {64}  # routed subsets
    weighted = result.table[result.table["gram"] == "router_weighted"]
    assert set(weighted["method"]) == ({"moe_pruner"} if family == "mixtral" else set())


def _hand_rtn8_sqnr_db(weight: torch.Tensor, gram) -> float:
    """Output SQNR of 8-bit symmetric per-row RTN (GPTQ convention ``s = 2·max|w|/255``, codes ``−128..127``),
    written out, on a captured Gram."""
    w = weight.double()
    scale = 2 * w.abs().amax(dim=1, keepdim=True) / 255
    error = scale * torch.clamp(torch.round(w / scale), -128, 127) - w
    return -10 * math.log10(float(torch.trace(error @ gram.gram @ error.T) / torch.trace(w @ gram.gram @ w.T)))


def test_meter_agrees_with_the_methods_output_error() -> None:
    generator = torch.Generator().manual_seed(5)
    weight, x = torch.randn(24, 40, generator=generator), torch.randn(300, 40, generator=generator)
    weight_hat = weight + 0.1 * torch.randn(24, 40, generator=generator)
    gram = x.double().T @ x.double()
    relative = LayerErrorMeter(weight, gram).relative_error(weight_hat)
    assert relative == pytest.approx(output_error(weight, weight_hat, gram)[0], rel=1e-12)
    assert relative == pytest.approx(_direct_relative_error(x.double(), weight, weight_hat), rel=1e-10)


def test_rows_carry_independent_layer_facts() -> None:
    model = tiny_model("llama")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = build_ledger(model, token_batches(4), "magnitude:0.5,rtn:4:g16,gptq:8:channel", model_id="tiny")
    table = result.table
    assert list(table.columns) == LEDGER_COLUMNS
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # the model is not modified
    refs = {ref.name: ref for ref in describe(model).linears}
    for row in table.itertuples():
        values = refs[row.layer].weight().double().numpy().ravel()
        centred = values - values.mean()
        pearson = np.mean(centred**4) / np.mean(centred**2) ** 2
        assert row.kurtosis_pearson == pytest.approx(pearson, rel=1e-9)
        assert row.kurtosis_fisher == pytest.approx(pearson - 3, rel=1e-9, abs=1e-9)
        assert row.parameters == row.out_features * row.in_features
        assert (row.model, row.block, row.tokens) == ("tiny", refs[row.layer].block_index, 64)
    rtn = table[table["term"] == "rtn:4:g16"]
    assert (rtn["bits_per_weight"] == 4 + 16 / 16).all()
    assert (table.loc[table["term"] == "magnitude:0.5", "zero_fraction"] == 0.5).all()
    for row in table[table["term"] == "gptq:8:channel"].itertuples():
        gram = layer_gram(refs[row.layer], result.capture.grams, None)
        rtn_db = _hand_rtn8_sqnr_db(refs[row.layer].weight(), gram)
        assert rtn_db <= row.sqnr_db <= rtn_db + 10, row.layer  # GPTQ gains 0.8-9.3 dB over RTN here
    assert json.loads(rtn["params"].iloc[0]) == {"bits": 4, "group": 16, "symmetric": True, "clip": "minmax"}


def test_layer_pattern_selects_layers() -> None:
    model = tiny_model("llama")
    table = build_ledger(model, token_batches(4), "nf4", layers=r"layers\.1\..*_proj$").table
    assert set(table["block"]) == {1} and len(table) == 7
    table = build_ledger(model, token_batches(4), "nf4@attention", layers="o_proj").table
    assert list(table["role"]) == ["o", "o"]
    with pytest.raises(PvqError, match="the layer pattern 'decoder' matches none of the 14 layers"):
        build_ledger(model, token_batches(4), "nf4", layers="decoder")
    with pytest.raises(PvqError, match="not a valid regular expression"):
        build_ledger(model, token_batches(4), "nf4", layers="(")


def test_bad_inputs_give_one_clear_error() -> None:
    model = tiny_model("llama")
    with pytest.raises(PvqError, match=r"unknown method 'gtpq'; methods: magnitude, .*gptq"):
        build_ledger(model, token_batches(4), "nf4,gtpq:4")
    with pytest.raises(PvqError, match=r"parameter 'bits': must be an integer in 2\.\.16"):
        build_ledger(model, token_batches(4), "rtn:17")
    with pytest.raises(PvqError, match=r"parameter 'sparsity': must lie in \[0, 1\)"):
        build_ledger(model, token_batches(4), "wanda:1")
    with pytest.raises(PvqError, match="fewer than the 64 x 128 calibration tokens asked"):
        text_batches(tiny_tokenizer(), TEXT, CalibrationProtocol(64, 128, 8))
    with torch.no_grad():
        describe(model).blocks[0].attention.linears[1].module.weight[3, 3] = math.inf
    with pytest.raises(PvqError, match=r"layer model\.layers\.0\.self_attn\.k_proj has NaN or Inf weights"):
        build_ledger(model, token_batches(4), "nf4")


def test_weight_tensor_study_has_one_row_per_tensor_and_bits() -> None:
    model = tiny_model("gpt2")
    study = weight_tensor_study(model, bits=(2, 4, 8))
    refs = describe(model).linears
    assert len(study) == 3 * len(refs)
    assert list(study.groupby("layer", sort=False).size().index) == [ref.name for ref in refs]
    first = study[study["layer"] == refs[0].name]
    values = refs[0].weight().double().numpy().ravel()
    centred = values - values.mean()
    assert first["kurtosis"].iloc[0] == pytest.approx(np.mean(centred**4) / np.mean(centred**2) ** 2, rel=1e-6)
    assert list(first["sparsity"]) == [1 - 2 / 16, 1 - 4 / 16, 1 - 8 / 16]
    assert (first["quant_sqnr_db"].diff().dropna() > 0).all()


def test_cli_writes_table_and_provenance(tmp_path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    def fake_load(name: str, **placement: object) -> models.LoadedModel:
        return models.LoadedModel(tiny_model("llama"), tiny_tokenizer(), name, "hash123", True, "test")

    monkeypatch.setattr("measure.capture.placement.load_model", fake_load)
    monkeypatch.setattr(text, "calibration_text", lambda: TEXT)
    argv = ["ledger", "--model", "tiny-llama", "--methods", "magnitude:0.5,gptq:4:g16", "--sequences", "4",
            "--seq-len", "32", "--batch-size", "2", "--mode", "sequential", "--out", str(tmp_path)]  # fmt: skip
    assert cli.main(argv) == 0
    table = read_table(tmp_path / "ledger.parquet")
    assert len(table) == 14 * 2 and set(table["model"]) == {"tiny-llama"}
    provenance = read_provenance(tmp_path / "ledger.parquet")
    assert provenance["model_hash"] == "hash123" and provenance["capture_mode"] == "sequential"
    assert provenance["calibration"] == {"sequences": 4, "sequence_length": 32, "batch_size": 2, "bos": True,
                                         "text": "wikipedia-calibration"}  # fmt: skip
    assert provenance["calibration_tokens"] == 128 and provenance["seed"] == 0
    assert provenance["grid_detection"]["verdict"] == "no low-bit grid detected"
    assert [m["term"] for m in provenance["methods"]] == ["magnitude:0.5", "gptq:4:g16"]
    assert "local error with original inputs" in provenance["error_definition"]
    argv[4] = "nf4,bogus"
    capsys.readouterr()
    assert cli.main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("pvq ledger: error: spec term 'bogus': unknown method 'bogus'; methods: magnitude,")
    assert len(error.splitlines()) == 1
    assert ledger.DEFAULT_METHODS.count(",") == 22


@pytest.mark.parametrize("family", ["llama", "mixtral"])
def test_forked_workers_give_the_same_rows_as_one_process(family: str) -> None:
    model = tiny_model(family)
    one = build_ledger(model, token_batches(4), METHODS, workers=1).table
    two = build_ledger(model, token_batches(4), METHODS, workers=2).table
    columns = [c for c in LEDGER_COLUMNS if c != "seconds"]
    assert len(one) > 0
    assert one[columns].equals(two[columns])


def test_workers_below_one_are_refused() -> None:
    with pytest.raises(PvqError, match="workers must be at least 1"):
        build_ledger(tiny_model("llama"), token_batches(4), "nf4", workers=0)


def test_a_given_capture_gives_the_same_rows_as_capturing_again() -> None:
    model = tiny_model("llama")
    columns = [c for c in LEDGER_COLUMNS if c != "seconds"]
    fresh = build_ledger(model, token_batches(4), METHODS).table
    reused = build_ledger(model, token_batches(4), METHODS, captured=capture(model, token_batches(4))).table
    assert len(fresh) > 0
    assert fresh[columns].equals(reused[columns])
    with pytest.raises(PvqError, match="capture again"):
        build_ledger(model, token_batches(4), METHODS, captured=capture(model, token_batches(4)[:1]))


def test_output_energy_and_its_share_equal_direct_sums_over_the_kept_rows() -> None:
    model = tiny_model("llama").double()
    result = build_ledger(model, token_batches(4), "rtn:4:g128", keep_rows=10_000)
    refs = {ref.name: ref for ref in describe(model).linears}
    direct = {}
    for row in result.table.itertuples():
        x = layer_gram(refs[row.layer], result.capture.grams, result.experts).sample
        direct[row.layer] = float(((x @ refs[row.layer].weight().double().T) ** 2).sum())
        assert row.output_energy == pytest.approx(direct[row.layer], rel=1e-12)
    for row in result.table.itertuples():
        assert row.output_energy_share == pytest.approx(direct[row.layer] / sum(direct.values()), rel=1e-12)
