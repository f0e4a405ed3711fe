"""Tidy result tables: parquet plus a JSON provenance sidecar, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from measure.atomic import atomic_path, write_text_atomic


def sidecar_path(table_path: str | os.PathLike[str]) -> Path:
    """The provenance file that accompanies a table: ``NAME.parquet`` -> ``NAME.json``."""
    return Path(table_path).with_suffix(".json")


def write_table(df: pd.DataFrame, path: str | os.PathLike[str], provenance: dict[str, Any]) -> Path:
    """Write ``df`` as parquet and its provenance sidecar; the table is renamed into place last."""
    target = Path(path)
    write_text_atomic(sidecar_path(target), json.dumps(provenance, indent=2, sort_keys=True, default=str))
    with atomic_path(target) as tmp:
        df.to_parquet(tmp, index=False)
    return target


def read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a result table written by :func:`write_table`."""
    return pd.read_parquet(path)


def read_provenance(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the provenance sidecar of a table."""
    return json.loads(sidecar_path(path).read_text())
