"""The evaluation result cache and its tidy table.

A result is identified by :class:`EvalKey` = (model hash, compression spec, task, protocol); its digest names
one JSON file ``<root>/cache/<digest>.json`` holding the tidy rows and their provenance. Existing results are
never recomputed. :meth:`ResultCache.write_table` gathers every cached row into ``<root>/eval.parquet``
(with its JSON provenance sidecar), the table figures read.

Tidy columns: :data:`COLUMNS` — one row per (model, spec, task, subtask, metric).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from measure.records.atomic import write_text_atomic
from measure.records.provenance import collect
from measure.records.store import write_table

COLUMNS = (
    "model_id", "model_hash", "spec", "task", "subtask", "metric", "value", "stderr", "n", "limit",
    "num_fewshot", "runtime_s", "protocol", "cache_key",
)
NO_SPEC = "none"
TABLE_NAME = "eval.parquet"


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal text (and equal digests)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class EvalKey:
    """What identifies a result: the weights, how they were compressed, the task and its protocol."""

    model_hash: str
    spec: str
    task: str
    protocol: Mapping[str, Any] = field(hash=False)

    @property
    def digest(self) -> str:
        """sha256 (first 24 hex digits) of the canonical JSON of all four fields."""
        fields = {"model_hash": self.model_hash, "spec": self.spec, "task": self.task, "protocol": self.protocol}
        return hashlib.sha256(canonical_json(fields).encode()).hexdigest()[:24]


def tidy_rows(
    key: EvalKey, model_id: str, metric_rows: list[dict[str, Any]], runtime_s: float
) -> list[dict[str, Any]]:
    """Full table rows from metric rows ``{subtask, metric, value, stderr, n[, num_fewshot]}`` of one result.

    ``limit`` is the protocol's questions per task, or its ``max_windows`` for perplexity.
    """
    common = {
        "model_id": model_id, "model_hash": key.model_hash, "spec": key.spec, "task": key.task,
        "limit": key.protocol.get("limit", key.protocol.get("max_windows")), "runtime_s": runtime_s,
        "protocol": canonical_json(key.protocol), "cache_key": key.digest,
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
        record = {"rows": rows, "provenance": collect(model_id=model_id, **provenance)}
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
