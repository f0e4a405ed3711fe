"""Cached evaluation runs of one model variant (a loaded model, optionally compressed in memory).

``pvq eval`` and ``pvq run`` go through :func:`cached_perplexity` and :func:`cached_task`, so a result that exists
under the same :class:`measure.records.cache_key.CacheKey` is read, never recomputed, and the compressed model is
only built when some result is missing. The key (:meth:`ModelVariant.key`) holds the model hash, spec, task and
protocol, the calibration protocol the spec is compressed with, the content hash of the loaded weights, the code
version of this module's import closure (with the compressing module's for a compressed variant), the content
hash of the data read (the calibration text; the task files and benchmark datasets for a task) and the
environment (library versions, device type, dtype).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import torch

from measure.data.benchmarks import BENCHMARKS_SOURCE
from measure.data.calibration import CalibrationProtocol
from measure.data.text import text_source
from measure.evaluation.lmeval import TASK_FILES_SOURCE, TaskRequest, evaluate_task, task_protocol
from measure.evaluation.perplexity import TokenWindows, evaluate_perplexity
from measure.evaluation.results import NO_SPEC, EvalKey, ResultCache
from measure.records.cache_key import CacheKey, data_digests, environment
from measure.records.code_version import modules_version

Rows = list[dict[str, Any]]
Compressor = Callable[[torch.nn.Module], torch.nn.Module]


class ModelVariant:
    """``loaded`` (a :class:`measure.models.load.LoadedModel`) compressed by ``compress`` under the name ``spec``,
    calibrated by ``calibration`` (None: ``compress`` reads no calibration text).

    ``compress`` receives a deep copy of the uncompressed model, which stays intact as the KL reference.
    """

    def __init__(
        self, loaded: Any, spec: str = NO_SPEC, compress: Compressor | None = None,
        calibration: CalibrationProtocol | None = None,
    ) -> None:
        if (spec == NO_SPEC) != (compress is None):
            raise ValueError("a compressed variant needs both a spec name and a compress function")
        self.loaded = loaded
        self.spec = spec
        self.compress = compress
        self.calibration = calibration

    @functools.cached_property
    def model(self) -> torch.nn.Module:
        """The evaluated model, built on first use."""
        if self.compress is None:
            return self.loaded.model
        return self.compress(copy.deepcopy(self.loaded.model))

    @property
    def reference(self) -> torch.nn.Module | None:
        """The uncompressed model for KL, or None when this variant is the uncompressed model."""
        return None if self.compress is None else self.loaded.model

    def code_modules(self) -> list[str]:
        """The modules whose import closure computes this variant's results: this module (the evaluation) and,
        when compressed, the module of the compress function."""
        return [__name__] + ([] if self.compress is None else [self.compress.__module__])

    def key(self, task: str, protocol: dict[str, Any], data: tuple[str, ...] = ()) -> EvalKey:
        """The cache key of ``task`` under ``protocol`` (the weights' dtype is part of the protocol), reading the
        data sources ``data`` besides the calibration text (see the module docstring)."""
        model, model_hash = self.loaded.model, self.loaded.model_hash
        protocol = {**protocol, "dtype": str(model.dtype)}
        calibration = None if self.calibration is None else self.calibration.as_dict()
        sources = data if self.calibration is None else (*data, text_source(self.calibration.text))
        key = CacheKey(
            kind=task, config={"model_hash": model_hash, "spec": self.spec, "protocol": protocol,
                               "calibration": calibration},
            weights=self.loaded.weights_sha256, code=modules_version(self.code_modules()),
            data=data_digests(sources), environment=environment(model.device, model.dtype),
        )  # fmt: skip
        return EvalKey(model_hash, self.spec, task, protocol, key)

    def provenance(self) -> dict[str, Any]:
        """Provenance fields recorded with every result of this variant."""
        return {"model": self.loaded.describe(), "spec": self.spec}


def cached_perplexity(
    cache: ResultCache, variant: ModelVariant, windows: TokenWindows, batch_size: int = 1
) -> tuple[Rows, bool]:
    """Perplexity rows of ``variant`` on ``windows`` (with KL to the uncompressed model when compressed)."""
    kl_reference = None if variant.reference is None else variant.loaded.model_hash
    key = variant.key("perplexity", {**windows.protocol.as_dict(), "kl_reference": kl_reference})
    return cache.get_or_compute(
        key, variant.loaded.model_id,
        lambda: evaluate_perplexity(variant.model, windows, variant.reference, batch_size).metric_rows(),
        **variant.provenance(),
    )


def cached_task(
    cache: ResultCache, variant: ModelVariant, request: TaskRequest, limit: int | None = None, batch_size: int = 8
) -> tuple[Rows, bool]:
    """lm-eval rows of ``variant`` on one task, with the model's BOS policy."""
    bos = variant.loaded.bos_per_window
    data = () if request.stock else (TASK_FILES_SOURCE, BENCHMARKS_SOURCE)
    key = variant.key(request.name, task_protocol(request, limit, bos), data)
    return cache.get_or_compute(
        key, variant.loaded.model_id,
        lambda: evaluate_task(
            variant.model, variant.loaded.tokenizer, request, limit=limit, batch_size=batch_size, add_bos=bos
        ),
        **variant.provenance(),
    )
