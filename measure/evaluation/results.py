"""The evaluation result cache and its tidy table.

A result is labelled by :class:`EvalKey` = (model hash, compression spec, task, protocol) and identified by its
:class:`measure.records.cache_key.CacheKey` (weights, code, data, calibration, environment as well); the key's
digest names one JSON file ``<root>/cache/<digest>.json`` holding the tidy rows and their provenance. A result
under the same key is never recomputed. :meth:`ResultCache.write_table` gathers every cached row into
``<root>/eval.parquet`` (with its JSON provenance sidecar), the table figures read.

Tidy columns: :data:`COLUMNS` — one row per (model, spec, task, subtask, metric).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from measure.records.atomic import write_text_atomic
from measure.records.cache_key import CacheKey
from measure.records.canonical import canonical_json
from measure.records.provenance import collect
from measure.records.store import write_table

COLUMNS = (
    "model_id", "model_hash", "spec", "task", "subtask", "metric", "value", "stderr", "n", "limit",
    "num_fewshot", "runtime_s", "protocol", "cache_key",
)
NO_SPEC = "none"
TABLE_NAME = "eval.parquet"


@dataclass(frozen=True)
class EvalKey:
    """A result's labels in the table (the model hash, the spec, the task and its protocol) and its cache key
    ``key`` (:mod:`measure.records.cache_key`; without one, a key of the four labels alone)."""

    model_hash: str
    spec: str
    task: str
    protocol: Mapping[str, Any] = field(hash=False)
    key: CacheKey | None = field(default=None, hash=False)

    @property
    def cache_key(self) -> CacheKey:
        """The :class:`CacheKey` of this result."""
        if self.key is not None:
            return self.key
        labels = {"model_hash": self.model_hash, "spec": self.spec, "protocol": self.protocol}
        return CacheKey(self.task, labels)

    @property
    def digest(self) -> str:
        """The digest of :attr:`cache_key` (it names the result's file)."""
        return self.cache_key.digest


def tidy_rows(
    key: EvalKey, model_id: str, metric_rows: list[dict[str, Any]], runtime_s: float
) -> list[dict[str, Any]]:
    """Full table rows from metric rows ``{subtask, metric, value, stderr, n[, num_fewshot]}`` of one result.

    ``limit`` is the protocol's questions per task, or its ``max_windows`` for perplexity.
    """
    common = {
        "model_id": model_id, "model_hash": key.model_hash, "spec": key.spec, "task": key.task,
        "limit": key.protocol.get("limit", key.protocol.get("max_windows")), "runtime_s": runtime_s,
        "protocol": canonical_json(key.protocol, stringify=True), "cache_key": key.digest,
    }
    return [{**common, "num_fewshot": None, "stderr": None, "subtask": "", **row} for row in metric_rows]


class ResultCache:
    """Cached tidy rows under ``root`` (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, key: EvalKey) -> Path:
        """The JSON file of one result."""
        return self.root / "cache" / f"{key.digest}.json"

    def load(self, key: EvalKey) -> list[dict[str, Any]] | None:
        """The cached rows of ``key``, or None when it was never computed."""
        path = self.path(key)
        return json.loads(path.read_text())["rows"] if path.exists() else None

    def get_or_compute(
        self, key: EvalKey, model_id: str, compute: Callable[[], list[dict[str, Any]]], **provenance: Any
    ) -> tuple[list[dict[str, Any]], bool]:
        """The rows of ``key`` and whether they came from the cache; computes and stores them when absent.

        ``compute`` returns metric rows; their wall-clock runtime is recorded in every row.
        """
        cached = self.load(key)
        if cached is not None:
            return cached, True
        start = time.perf_counter()
        metric_rows = compute()
        rows = tidy_rows(key, model_id, metric_rows, time.perf_counter() - start)
        provenance = collect(model_id=model_id, cache_key_fields=key.cache_key.as_dict(), **provenance)
        record = {"rows": rows, "provenance": provenance}
        write_text_atomic(self.path(key), json.dumps(record, indent=1, default=str))
        return rows, False

    def table(self) -> pd.DataFrame:
        """Every cached row, in :data:`COLUMNS` order, sorted by model, spec, task, subtask and metric."""
        files = sorted(self.root.glob("cache/*.json"))
        rows = [row for path in files for row in json.loads(path.read_text())["rows"]]
        frame = pd.DataFrame(rows, columns=list(COLUMNS))
        return frame.sort_values(["model_id", "spec", "task", "subtask", "metric"], ignore_index=True)

    def write_table(self) -> Path:
        """Write :meth:`table` to ``<root>/eval.parquet`` with a provenance sidecar; return its path."""
        frame = self.table()
        provenance = collect(results=int(frame["cache_key"].nunique()), rows=len(frame))
        return write_table(frame, self.root / TABLE_NAME, provenance)
