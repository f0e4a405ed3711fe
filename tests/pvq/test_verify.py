"""`pvq verify`: a results folder against a reference copy, table by table, on the experiments' synthetic
tables (plus an evaluation table with its wall-clock column)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from figures.registry import load_catalog, synthetic_tables
from measure.records.compare import compare_tables, relative_difference
from measure.records.store import read_table, write_table
from pvq.cli import main

load_catalog()
TABLES = {  # "<folder>/<name>" -> experiment whose synthetic table it holds
    "model-free/theory_formats_gaussian": "theory_formats_gaussian",
    "model-free/theory_kurtosis_bits": "theory_kurtosis_bits",
    "toy-model/removal_study": "removal_study",
    "toy-model/weight_tensor_study": "weight_tensor_study",
}
CHANGED_TABLE, CHANGED_COLUMN = "toy-model/removal_study", "removal_sqnr_db"


def eval_table() -> pd.DataFrame:
    return pd.DataFrame({"task": ["csqa", "ppl"], "metric": ["acc", "perplexity"], "value": [0.25, 21.5],
                         "stderr": [0.01, None], "runtime_s": [12.3, 4.5]})  # fmt: skip


@pytest.fixture
def here(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    tables = synthetic_tables(sorted(set(TABLES.values())))
    for name, experiment in TABLES.items():
        write_table(tables[experiment], results / f"{name}.parquet", {"experiment": experiment})
    write_table(eval_table(), results / "eval" / "eval.parquet", {"rows": 2})
    return results


@pytest.fixture
def reference(here: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(here, tmp_path / "published" / "results"))


def verify(reference: Path, here: Path, *options: str) -> int:
    return main(["verify", str(reference), "--results", str(here), *options])


def scale_one_number(path: Path, column: str, factor: float) -> float:
    """Multiply the first finite, non-zero number of ``column`` by ``factor``; return the relative change as
    :func:`relative_difference` measures it against the changed value."""
    table = read_table(path)
    row = int(np.flatnonzero(np.isfinite(table[column]) & (table[column] != 0))[0])
    table.loc[row, column] *= factor
    write_table(table, path, {})
    return abs(1 - factor) / factor


def test_an_untouched_copy_matches(here, reference, capsys):
    assert verify(reference, here) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:-1] == [f"{name}: match" for name in sorted([*TABLES, "eval/eval"])]
    assert lines[-1] == "5 tables: 5 match, 0 differs, 0 missing, 0 extra"


def test_the_parent_of_a_results_folder_is_a_reference_too(here, reference, capsys):
    assert verify(reference.parent, here) == 0


def test_one_number_changed_by_one_percent_fails_naming_table_and_column(here, reference, capsys):
    change = scale_one_number(reference / f"{CHANGED_TABLE}.parquet", CHANGED_COLUMN, 1.01)
    assert verify(reference, here) == 1
    lines = capsys.readouterr().out.splitlines()
    difference = f"column {CHANGED_COLUMN}, 1 cell, largest relative difference {change:.3g}"
    assert f"{CHANGED_TABLE}: differs: {difference}" in lines
    assert sum(line.endswith(": match") for line in lines) == 4
    assert verify(reference, here, "--rtol", "0.02") == 0


def test_missing_and_extra_tables_are_named(here, reference, capsys):
    (reference / "model-free" / "theory_kurtosis_bits.parquet").unlink()
    (here / "toy-model" / "weight_tensor_study.parquet").unlink()
    assert verify(reference, here) == 1
    lines = capsys.readouterr().out.splitlines()
    assert "model-free/theory_kurtosis_bits: extra here (not in the reference)" in lines
    assert "toy-model/weight_tensor_study: missing here (only in the reference)" in lines


def test_wall_clock_seconds_are_not_compared(here, reference, capsys):
    scale_one_number(reference / "eval" / "eval.parquet", "runtime_s", 3.0)
    assert verify(reference, here) == 0


def test_bad_arguments_are_errors_before_any_comparison(here, reference, tmp_path, capsys):
    assert verify(reference, here, "--rtol", "-1") == 2
    assert verify(tmp_path / "empty", here) == 2
    (tmp_path / "empty").mkdir()
    assert verify(tmp_path / "empty", here) == 2
    assert verify(reference, tmp_path / "absent") == 2
    assert "--rtol" in capsys.readouterr().err


def test_relative_difference_against_an_independent_computation():
    here = np.array([1.0, 1.01, np.nan, np.nan, np.inf, 0.0, 2.0, 5.0, -np.inf])
    reference = np.array([1.0, 1.0, np.nan, 1.0, np.inf, 0.0, 0.0, -5.0, np.inf])
    expected = [0.0, 0.01, 0.0, math.inf, 0.0, 0.0, math.inf, 2.0, math.inf]
    np.testing.assert_allclose(relative_difference(here, reference), expected, rtol=1e-12)


def test_tables_compare_strings_missing_values_columns_and_rows():
    table = pd.DataFrame({
        "name": pd.array(["a", None, "c"], dtype="string"), "count": pd.array([1, None, 3], dtype="Int64"),
        "x": [0.5, np.nan, 1e-12], "flag": [True, False, True], "runtime_s": [1.0, 2.0, 3.0],
    })
    assert compare_tables(table, table.copy(), rtol=1e-6) == []
    changed = table.assign(name=pd.array(["a", "b", "c"], dtype="string"), flag=[True, True, False],
                           runtime_s=[9.0, 9.0, 9.0])  # fmt: skip
    assert compare_tables(changed, table, rtol=1e-6) == [
        "column name, 1 cell not equal", "column flag, 2 cells not equal",
    ]
    assert compare_tables(table[["name", "x"]], table[["name", "count"]], rtol=1e-6) == [
        "columns only here: x", "columns only in the reference: count",
    ]
    assert compare_tables(table.head(2), table, rtol=1e-6) == ["2 rows here, 3 in the reference"]
