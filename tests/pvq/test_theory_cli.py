"""`pvq theory`: JSON point results agree with the library; readable table; tables on disk; clear errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pvq.cli import main
from theory.distributions import Gaussian, Laplace, StudentT, TruncatedStudentT
from theory.sqnr import optimal_clip, pruning_sqnr_db, quantization_sqnr_db


def run_json(capsys, *argv):
    assert main(["theory", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_point_gaussian(capsys):
    result = run_json(capsys, "--dist", "gaussian", "--bits", "4")
    for key in ("quant_sqnr_db", "prune_sqnr_db", "sparsity", "bits_per_weight", "clip", "convention",
                "grid_convention"):
        assert key in result
    assert result["sparsity"] == 0.75 and result["bits_per_weight"] == 4.0
    assert result["prune_sqnr_db"] == pytest.approx(5.58, abs=0.01)
    assert result["quant_sqnr_db"] == pytest.approx(19.26, abs=0.01)  # as the docstring of theory.sqnr records
    assert result["quant_sqnr_db"] == pytest.approx(quantization_sqnr_db(Gaussian(), "int4"), abs=1e-12)
    assert result["convention"]["mask_encoding"] == "none"


def test_json_point_student_t_matches_library(capsys):
    result = run_json(capsys, "--dist", "student-t", "--kurtosis", "8", "--bits", "3",
                      "--mask-encoding", "bitmask")
    dist = StudentT.from_kurtosis(8.0)
    assert result["sparsity"] == pytest.approx(1 - 2 / 16)
    assert result["quant_sqnr_db"] == pytest.approx(quantization_sqnr_db(dist, "int3"))
    assert result["prune_sqnr_db"] == pytest.approx(pruning_sqnr_db(dist, 1 - 2 / 16))
    assert result["clip"] == pytest.approx(optimal_clip(dist, 3))
    assert result["kurtosis"] == pytest.approx(8.0)


def test_json_point_truncated_range_clip(capsys):
    result = run_json(capsys, "--dist", "student-t", "--kurtosis", "50", "--truncate", "20", "--bits", "2",
                      "--clip-rule", "range")
    dist = TruncatedStudentT(50.0, 20.0)
    assert result["clip"] == pytest.approx(20.0 / dist.std())
    assert result["pruning_wins"] is True and result["truncate_sigma"] == 20.0


def test_readable_table_shows_the_json_fields_and_the_library_values(capsys):
    assert main(["theory", "--dist", "laplace", "--bits", "5"]) == 0
    rows = dict(line.split(maxsplit=1) for line in capsys.readouterr().out.strip().splitlines())
    result = run_json(capsys, "--dist", "laplace", "--bits", "5")
    assert list(rows) == list(result)
    assert float(rows["quant_sqnr_db"]) == pytest.approx(quantization_sqnr_db(Laplace(), "int5"), abs=5e-5)
    assert float(rows["prune_sqnr_db"]) == pytest.approx(pruning_sqnr_db(Laplace(), 1 - 5 / 16), abs=5e-5)
    assert float(rows["sparsity"]) == 1 - 5 / 16 and rows["pruning_wins"] == "False"
    assert json.loads(rows["convention"]) == result["convention"]


def test_tables_are_written(tmp_path, capsys):
    assert main(["theory", "--tables", str(tmp_path), "--kurtoses", "4,10", "--blocks", "64"]) == 0
    formats = pd.read_parquet(tmp_path / "theory_formats_gaussian.parquet")
    study = pd.read_parquet(tmp_path / "theory_kurtosis_bits.parquet")
    assert set(formats.family) == {"quantization", "pruning"}
    assert len(study) == 2 * 7 and sorted(set(study.kurtosis_parameter)) == [4.0, 10.0]
    provenance = json.loads((tmp_path / "theory_kurtosis_bits.json").read_text())
    assert provenance["convention"]["mask_encoding"] == "none" and provenance["kurtoses"] == [4.0, 10.0]


@pytest.mark.parametrize("argv, message", [
    (["--bits", "9"], "bits must be an integer in 2..8"),
    (["--bits", "1"], "bits must be an integer in 2..8"),
    (["--dist", "student-t", "--kurtosis", "3", "--bits", "4"], "kurtosis must be a finite number > 3"),
    (["--dist", "student-t", "--kurtosis", "2.5", "--bits", "4"], "kurtosis must be a finite number > 3"),
    (["--dist", "cauchy", "--bits", "4"], "unknown distribution"),
    (["--bits", "4", "--mask-encoding", "nm"], "N:M fixes the sparsity"),
    (["--bits", "4", "--clip-rule", "range"], "bounded distribution"),
    ([], "give --bits"),
])
def test_bad_input_exits_2_with_one_message(capsys, argv, message):
    assert main(["theory", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
