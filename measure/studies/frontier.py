"""Perplexity and KL against compressed size, one compression spec at a time.

Each spec compresses the model (:func:`measure.compress.apply.apply_spec`), is scored on the evaluation windows
with the original as KL reference (:class:`measure.evaluation.residual.ResidualStreamEvaluator`, the evaluator of
the removal study, so the numbers share its windows), and the weights are restored before the next spec.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from torch import nn

from measure.compress.apply import apply_spec
from measure.compress.spec import LayerStep, parse_spec
from measure.evaluation.perplexity import TokenWindows, interval_columns
from measure.evaluation.residual import ResidualStreamEvaluator, restored
from measure.studies.inputs import original_capture


def _step_names(spec: str) -> list[tuple[str, str]]:
    """(name, kind) of every step of ``spec`` in application order: a layer step's method name and kind (a fused
    prune-then-quantize pair is one ``joint`` step), a model step's term kind for both."""
    return [(step.method.name, step.method.kind) if isinstance(step, LayerStep) else (step.kind.name,) * 2
            for step in parse_spec(spec).steps]  # fmt: skip


def spec_method(spec: str) -> str:
    """The method of a spec: its steps' names joined by ``+`` (``sparsegpt:0.5+gptq:4`` → ``sparsegpt+gptq``)."""
    return "+".join(name for name, _ in _step_names(spec))


def spec_family(spec: str) -> str:
    """``quantization`` / ``pruning`` for a single method, ``joint`` for a pruning + quantization pair."""
    kinds = {kind for _, kind in _step_names(spec)}
    return kinds.pop() if len(kinds) == 1 else "joint"


def compression_frontier_table(
    model: nn.Module, batches: Sequence[torch.Tensor], windows: TokenWindows, specs: Sequence[str],
    calibration: str, batch_size: int,
) -> pd.DataFrame:  # fmt: skip
    """One row per spec: method, family, ``bits_per_compressed_weight`` (over the linear weights the spec
    compresses), ``bits_per_model_parameter`` (over every parameter of the model, the uncompressed ones at 16
    bits) and MB, PPL and KL to the original on ``windows`` with their 95 % intervals
    (:data:`measure.evaluation.perplexity.INTERVAL_COLUMNS`), and the original's PPL. ``calibration``: the
    stream compression is calibrated on (:data:`measure.compress.spec.CALIBRATION_STREAMS`). The model is left as
    it was."""

    evaluator = ResidualStreamEvaluator(model, windows, batch_size)
    base = evaluator.evaluate().perplexity
    captured = original_capture(model, batches, calibration)
    rows = []
    for spec in specs:
        with restored(model):
            report = apply_spec(model, spec, batches, calibration=calibration, captured=captured, workers=None)
            result = evaluator.evaluate(start=0)
        rows.append({
            "spec": spec, "method": spec_method(spec), "family": spec_family(spec),
            "bits_per_compressed_weight": report.size["compressed_bits_per_weight"],
            "bits_per_model_parameter": report.size["bits_per_weight"], "size_mb": report.size["bytes"] / 1e6,
            "perplexity": result.perplexity, "kl_to_reference_nats": result.kl_to_reference_nats,
            "base_perplexity": base, **interval_columns(result),
        })  # fmt: skip
    return pd.DataFrame(rows)
