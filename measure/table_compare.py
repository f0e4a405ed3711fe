"""Do two results folders hold the same tables? Compared table by table, column by column, cell by cell.

Two tables match when they have the same columns (in any order), the same number of rows, and every cell
agrees, row by row in stored order (experiments write their rows in a deterministic order). Numbers agree
when their relative difference ``|here - reference| / |reference|`` is at most the column's tolerance (NaN
equals NaN, an infinity equals the same infinity, and a reference of 0 is matched only by 0); strings,
booleans and other values must be equal. Every column uses the caller's ``rtol`` (relative, dimensionless)
unless :data:`COLUMN_RTOL` gives it its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from measure.records.store import find_tables, read_table

COLUMN_RTOL: dict[str, float | None] = {
    # Wall-clock seconds of each evaluation result (results/eval/eval.parquet): they change from run to run and
    # machine to machine, so their values are not compared (None); the column itself must still be present.
    "runtime_s": None,
}


@dataclass(frozen=True)
class ColumnDifference:
    """Cells of one column that disagree: how many, and the largest relative difference among them (inf
    where the reference is 0 or the values are not numbers, NaN for columns of strings and other values)."""

    column: str
    cells: int
    largest_relative: float

    def describe(self) -> str:
        """``column X, N cells, largest relative difference D``."""
        cells = f"{self.cells} cell{'s' if self.cells != 1 else ''}"
        if np.isnan(self.largest_relative):
            return f"column {self.column}, {cells} not equal"
        return f"column {self.column}, {cells}, largest relative difference {self.largest_relative:.3g}"


def relative_difference(here: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Element-wise ``|here - reference| / |reference|`` (dimensionless): 0 where the two are equal (NaN and
    NaN, equal infinities included), inf where they differ and the reference is 0, infinite or NaN."""
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.abs(here - reference) / np.abs(reference)
    same = (here == reference) | (np.isnan(here) & np.isnan(reference))
    return np.where(same, 0.0, np.where(np.isfinite(relative), relative, np.inf))


def _is_number(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _numbers(column: pd.Series) -> np.ndarray:
    """A numeric column as float64, missing values (None, pd.NA) as NaN."""
    return column.astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)


def _equal_values(here: object, reference: object) -> bool:
    """Exact equality of two cells; two missing values are equal; array-like cells compare element-wise."""
    here_missing, reference_missing = (pd.api.types.is_scalar(v) and pd.isna(v) for v in (here, reference))
    if here_missing or reference_missing:
        return here_missing and reference_missing
    try:
        return bool(here == reference)
    except (TypeError, ValueError):
        return bool(np.array_equal(np.asarray(here), np.asarray(reference)))


def compare_column(name: str, here: pd.Series, reference: pd.Series, rtol: float) -> ColumnDifference | None:
    """The disagreeing cells of one column (rows aligned by position), or None when every cell agrees."""
    if _is_number(here) and _is_number(reference):
        relative = relative_difference(_numbers(here), _numbers(reference))
        differing = relative > rtol
        largest = float(relative[differing].max()) if differing.any() else 0.0
    else:
        differing = np.array([not _equal_values(a, b) for a, b in zip(here, reference, strict=True)], dtype=bool)
        largest = np.nan
    return ColumnDifference(name, int(differing.sum()), largest) if differing.any() else None


def compare_tables(here: pd.DataFrame, reference: pd.DataFrame, rtol: float) -> list[str]:
    """What differs between two tables, one phrase per problem (columns, row count, each differing column);
    empty when they match. Columns named in :data:`COLUMN_RTOL` use their own tolerance (None: not compared)."""
    only_here = [column for column in here.columns if column not in reference.columns]
    only_reference = [column for column in reference.columns if column not in here.columns]
    problems = [f"columns only here: {', '.join(map(str, only_here))}"] if only_here else []
    if only_reference:
        problems.append(f"columns only in the reference: {', '.join(map(str, only_reference))}")
    if len(here) != len(reference):
        return [*problems, f"{len(here)} rows here, {len(reference)} in the reference"]
    for column in here.columns:
        tolerance = COLUMN_RTOL.get(str(column), rtol)
        if column in reference.columns and tolerance is not None:
            difference = compare_column(str(column), here[column].reset_index(drop=True),
                                        reference[column].reset_index(drop=True), tolerance)  # fmt: skip
            problems += [difference.describe()] if difference else []
    return problems


STATUSES = ("match", "differs", "missing", "extra")


@dataclass(frozen=True)
class TableVerdict:
    """The outcome for one table name: ``match``, ``differs`` (with the problems), ``missing`` (only in the
    reference) or ``extra`` (only here)."""

    name: str
    status: str
    problems: tuple[str, ...] = ()

    def line(self) -> str:
        """One line for a person: ``<name>: match`` / ``<name>: differs: column X, N cells, ...``."""
        detail = {
            "match": "match", "differs": "differs: " + "; ".join(self.problems),
            "missing": "missing here (only in the reference)", "extra": "extra here (not in the reference)",
        }
        return f"{self.name}: {detail[self.status]}"


def compare_folders(here: Path, reference: Path, rtol: float) -> list[TableVerdict]:
    """A verdict for every table name of either results folder (:func:`measure.records.store.find_tables`), by name."""
    here_tables, reference_tables = find_tables(here), find_tables(reference)
    return [
        _verdict(name, here_tables, reference_tables, rtol) for name in sorted({*here_tables, *reference_tables})
    ]


def _verdict(name: str, here: Mapping[str, Path], reference: Mapping[str, Path], rtol: float) -> TableVerdict:
    if name not in here:
        return TableVerdict(name, "missing")
    if name not in reference:
        return TableVerdict(name, "extra")
    problems = compare_tables(read_table(here[name]), read_table(reference[name]), rtol)
    return TableVerdict(name, "differs", tuple(problems)) if problems else TableVerdict(name, "match")


def tally(verdicts: list[TableVerdict]) -> str:
    """``N tables: a match, b differs, c missing, d extra``."""
    counts = ", ".join(f"{sum(v.status == status for v in verdicts)} {status}" for status in STATUSES)
    return f"{len(verdicts)} tables: {counts}"
