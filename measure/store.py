"""Tidy result tables: parquet plus a JSON provenance sidecar, written atomically; a results folder holds them
as ``<results>/<folder>/<name>.parquet`` (the folder: a model, ``model-free`` or ``eval``).

Cheap to import (pandas is imported when a table is read), so command-line modules can use its names."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from measure.records.atomic import atomic_path, write_text_atomic

if TYPE_CHECKING:
    import pandas as pd

RESULTS_DIR = "results"  # the default results folder, and its name inside a published archive
TABLE_SUFFIX = ".parquet"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")  # a published archive of a results folder (gzip tar)


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
    import pandas as pd

    return pd.read_parquet(path)


def read_provenance(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the provenance sidecar of a table."""
    return json.loads(sidecar_path(path).read_text())


def find_tables(results: str | os.PathLike[str]) -> dict[str, Path]:
    """Every table of a results folder, ``{"<folder>/<name>": path}`` for ``<results>/<folder>/<name>.parquet``,
    sorted by name (temporary files of an unfinished write end in ``.tmp`` and are not tables)."""
    root = Path(results)
    paths = sorted(root.glob(f"*/*{TABLE_SUFFIX}"))
    return {path.relative_to(root).with_suffix("").as_posix(): path for path in paths}
