"""Compression variants side by side: size, perplexity, KL to the original and lm-eval accuracy of each."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch

from measure.compress.apply import apply_spec
from measure.evaluation.lmeval import evaluate_task, resolve_tasks
from measure.evaluation.perplexity import TokenWindows, evaluate_perplexity, interval_columns
from measure.models.load import LoadedModel
from measure.studies.inputs import original_capture

BITS_PER_MB = 8e6
ORIGINAL_BITS = 16.0
"""Bits of every parameter of the original (dequantized) model."""


def variant_metrics(
    loaded: LoadedModel, spec: str, batches: Sequence[torch.Tensor], windows: TokenWindows,
    tasks: Mapping[str, int], calibration: str, captured: Any = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Size (``bits_per_model_parameter``: over every parameter of the original model, embeddings included, the
uncompressed ones at 16 bits; MB), PPL, KL to the original and task accuracies (``acc``; MMLU: micro
    average) of one variant: ``spec`` applied to a copy of the model (``""``: the original). One row per task of
    ``tasks`` (lm-eval task -> ``--limit``)."""

    parameters = sum(p.numel() for p in loaded.model.parameters())
    model, reference, bits = loaded.model, None, ORIGINAL_BITS * parameters
    if spec:
        model, reference = copy.deepcopy(loaded.model), loaded.model
        bits = apply_spec(model, spec, batches, calibration=calibration, captured=captured,
                          workers=None).size["bits"]  # fmt: skip
    result = evaluate_perplexity(model, windows, reference)
    common = {"spec": spec, "bits_per_model_parameter": bits / parameters, "size_mb": bits / BITS_PER_MB,
              "perplexity": result.perplexity, "kl_to_reference_nats": result.kl_to_reference_nats,
              **interval_columns(result)}  # fmt: skip
    rows = []
    for request in resolve_tasks(tasks):
        metrics = evaluate_task(model, loaded.tokenizer, request, limit=tasks[request.name],
                                add_bos=loaded.bos_per_window)  # fmt: skip
        accuracy = next(row for row in metrics if not row["subtask"] and row["metric"] in ("acc", "acc_micro"))
        rows.append({**common, "task": request.name, "accuracy": accuracy["value"],
                     "accuracy_stderr": accuracy["stderr"], "questions": accuracy["n"],
                     "limit": tasks[request.name]})  # fmt: skip
    return rows


def benchmark_table(
    loaded: LoadedModel, variants: Sequence[str], batches: Sequence[torch.Tensor], windows: TokenWindows,
    tasks: Mapping[str, int], calibration: str,
) -> pd.DataFrame:  # fmt: skip
    """:func:`variant_metrics` of every spec of ``variants``, one row per (spec, task); specs calibrated in
    parallel read one capture of the original model."""
    captured = original_capture(loaded.model, batches, calibration)
    rows = []
    for spec in variants:
        rows += variant_metrics(loaded, spec, batches, windows, tasks, calibration, captured)
    return pd.DataFrame(rows)
