"""One evaluation of a (compressed) model: perplexity and lm-eval tasks, cached, written as a tidy table.

``pvq eval`` and the scale-out jobs both call :func:`run_evaluation`. The compressed model is built in memory
(never saved) by :func:`compress_in_memory`; with a spec the KL divergence to the uncompressed model is reported
too. Results are cached under ``out`` by their cache key (:mod:`measure.evaluation.runs`: model hash, spec, task,
protocol, calibration protocol, weights, code, data and environment); the tidy table ``<out>/eval.parquet`` is
rewritten from the cache after every run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from measure.capture.placement import DEFAULT_DTYPE, device_map_for, resolve_dtype
from measure.compress.apply import apply_spec
from measure.compress.spec import Spec, parse_spec
from measure.data.calibration import CalibrationProtocol, calibration_batches
from measure.evaluation.lmeval import TASKS, TaskRequest, check_limit, check_stock_tasks, resolve_tasks
from measure.evaluation.perplexity import check_window_fits, default_window
from measure.evaluation.protocols import LEDGER_CALIBRATION, EvaluationProtocol, for_model
from measure.evaluation.results import ResultCache
from measure.evaluation.runs import Compressor, ModelVariant, cached_perplexity, cached_task
from measure.models.load import LoadedModel, load_model
from theory.errors import PvqError

SUMMARY_COLUMNS = ["task", "metric", "value", "stderr", "n", "limit", "runtime_s", "cached"]


@dataclass(frozen=True)
class EvaluationRequest:
    """What to evaluate: ``model`` (name, folder or .gguf) compressed by ``spec`` (None: uncompressed), on the
    perplexity protocol when ``ppl`` and on ``tasks``; ``device`` is a resolved torch device."""

    model: str
    out: Path
    spec: str | None = None
    tasks: tuple[str, ...] = ()
    ppl: bool = False
    window: int | None = None
    stride: int | None = None
    max_windows: int | None = None
    limit: int | None = None
    batch_size: int = 4
    device: str = "cpu"
    dtype: str = DEFAULT_DTYPE
    spec_name: str | None = None
    model_check: Callable[[nn.Module], None] | None = None
    calibration: CalibrationProtocol = LEDGER_CALIBRATION
    """``spec_name``: the name results carry (default: the spec itself); ``model_check(model)`` runs on the loaded
    model before anything is compressed (e.g. an allocation file checked against the model's layers);
    ``calibration``: the windows a spec is calibrated on (its ``bos`` is the model's BOS policy)."""


@dataclass(frozen=True)
class EvaluationReport:
    """The summary rows of one :func:`run_evaluation` (headline metrics, ``cached`` when read from the cache)."""

    model_id: str
    model_hash: str
    spec: str
    summary: pd.DataFrame
    table: Path


def compress_in_memory(
    loaded: LoadedModel, spec: Spec, device: str, protocol: CalibrationProtocol
) -> Compressor:
    """``model -> compressed model`` for ``spec``: compressed in place, one block at a time on ``device``,
    calibrated on the windows of ``protocol``."""

    def compress(model: Any) -> Any:
        apply_spec(model, spec, calibration_batches(loaded, protocol), device=device)
        return model

    return compress


def check_request(request: EvaluationRequest) -> tuple[list[TaskRequest], Spec | None]:
    """The resolved tasks and parsed spec of ``request``; PvqError for nothing to evaluate or a bad name."""
    requests = resolve_tasks(list(request.tasks)) if request.tasks else []
    if not requests and not request.ppl:
        raise PvqError(f"nothing to evaluate: give --ppl and/or --tasks (valid tasks: {', '.join(TASKS)})")
    check_limit(request.limit)
    check_stock_tasks(requests)
    resolve_dtype(request.dtype)
    return requests, None if request.spec is None else parse_spec(request.spec)


def run_evaluation(request: EvaluationRequest) -> EvaluationReport:
    """Load (spread over every GPU when more than one is visible and nothing is compressed), evaluate, tabulate."""
    tasks, spec = check_request(request)
    if not any(task.stock for task in tasks):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    device_map = device_map_for(request.device) if spec is None else None
    dtype = resolve_dtype(request.dtype)
    loaded = load_model(request.model, device=request.device, dtype=dtype, device_map=device_map)
    variant = ModelVariant(loaded)
    if spec is not None:
        if request.model_check is not None:
            request.model_check(loaded.model)
        name = request.spec_name or str(request.spec)
        protocol = for_model(request.calibration, loaded)
        variant = ModelVariant(loaded, name, compress_in_memory(loaded, spec, request.device, protocol), protocol)
    cache = ResultCache(request.out)
    summary = []
    if request.ppl:
        window = request.window or default_window(request.device)
        check_window_fits(loaded.model, window)
        windows = EvaluationProtocol(window, request.max_windows, request.stride).windows(loaded)
        rows, cached = cached_perplexity(cache, variant, windows, request.batch_size)
        summary += [{**row, "cached": cached} for row in rows]
    for task in tasks:
        rows, cached = cached_task(cache, variant, task, request.limit, request.batch_size)
        summary += [{**row, "cached": cached} for row in rows if not row["subtask"]]
    frame = pd.DataFrame(summary, columns=SUMMARY_COLUMNS).astype({"stderr": float})
    return EvaluationReport(loaded.model_id, loaded.model_hash, variant.spec, frame, cache.write_table())
