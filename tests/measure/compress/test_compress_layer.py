"""One compress-and-measure step: the ledger, apply_spec's report, the removal views and the KL sensitivities
give exactly the weights and relative output errors of :func:`measure.compress.layer.compress_layer` on the same
Gram."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from tiny_inputs import text_ids, token_batches, windows_of
from tiny_models import tiny_model

from measure.capture.statistics import Capture, capture
from measure.compress.apply import apply_spec
from measure.compress.layer import CompressedLayer, compress_layer, method_weight
from measure.compress.methods.metrics import LayerErrorMeter, output_error
from measure.compress.spec import parse_spec
from measure.evaluation.residual import ResidualStreamEvaluator
from measure.ledger import build_ledger
from measure.mixture.sensitivity import kl_sensitivity
from measure.models.architecture import describe
from measure.removal.views import ResidualStream, ViewMeter

TERMS = ("gptq:4:g16", "rtn:3:g16", "sparsegpt:0.5")


def _shared(model: torch.nn.Module, captured: Capture, term: str) -> dict[str, CompressedLayer]:
    """Every linear of ``model`` compressed by ``term`` on its own Gram, errors measured on the same Gram."""
    step = parse_spec(term).layer_steps[0]
    shared = {}
    for ref in describe(model).linears:
        weight, gram = method_weight(ref), captured.gram_for(ref.name).gram
        shared[ref.name] = compress_layer(weight, step, gram, LayerErrorMeter(weight, gram))
    return shared


def test_the_shared_step_is_the_method_and_the_gram_error() -> None:
    model = tiny_model("llama")
    captured = capture(model, token_batches(5))
    ref = describe(model).linears[0]
    step = parse_spec("gptq:4:g16").layer_steps[0]
    weight, gram = method_weight(ref), captured.gram_for(ref.name).gram
    measured = compress_layer(weight, step, gram, LayerErrorMeter(weight, gram))
    assert torch.equal(measured.weight_hat, step.method.apply(weight, gram, step.params))
    assert (measured.relative_error, measured.sqnr_db) == output_error(weight, measured.weight_hat, gram)
    unmeasured = compress_layer(weight, step, gram)
    assert math.isnan(unmeasured.relative_error) and math.isnan(unmeasured.sqnr_db)
    assert torch.equal(ref.weight(), describe(tiny_model("llama")).linears[0].weight())


@pytest.mark.parametrize("term", TERMS)
def test_ledger_apply_views_and_sensitivity_use_the_shared_step(term: str) -> None:
    model, batches = tiny_model("llama"), token_batches(5)
    captured = capture(model, batches)
    shared = _shared(model, captured, term)
    names = list(shared)

    ledger = build_ledger(model, batches, term, captured=captured, keep_weights=True)
    rows = ledger.table.set_index("layer")
    assert list(rows["relative_error"][names]) == [shared[name].relative_error for name in names]
    assert list(rows["sqnr_db"][names]) == [shared[name].sqnr_db for name in names]
    assert all(torch.equal(ledger.weights[name][term], shared[name].weight_hat) for name in names)

    compressed = copy.deepcopy(model)
    report = apply_spec(compressed, term, batches, calibration="parallel", captured=captured).layers
    assert list(report["layer"]) == names
    if parse_spec(term).layer_steps[0].method.needs_gram:
        assert list(report["relative_error"]) == [shared[name].relative_error for name in names]
        assert list(report["sqnr_db"]) == [shared[name].sqnr_db for name in names]
    else:  # a data-free pass captures no Gram, so its report has no error
        assert report["relative_error"].isna().all()
    assert all(torch.equal(ref.weight(), shared[ref.name].weight_hat) for ref in describe(compressed).linears)

    arch = describe(model)
    meter = ViewMeter(arch, captured, ResidualStream.record(model, arch, batches), workers=1)
    term_weights = meter.compress(parse_spec(term).layer_steps[0])
    for name, weight_hat, row_errors in zip(names, term_weights.weights, term_weights.rows, strict=True):
        assert torch.equal(weight_hat, shared[name].weight_hat)
        change = shared[name].weight_hat.float() - shared[name].weight.float()
        assert np.array_equal(row_errors, meter.scoring.row_errors(name, change))

    evaluator = ResidualStreamEvaluator(model, windows_of(text_ids(), 32))
    probes = kl_sensitivity(model, evaluator, captured, names[:2], probe=term, workers=1)
    assert list(probes["probe_relative_error"]) == [shared[name].relative_error for name in names[:2]]
