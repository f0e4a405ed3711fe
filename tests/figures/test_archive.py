"""`pvq figures --archive`: the archive holds the result tables, the rendered artifacts and a manifest whose
sha256 digests match the unpacked files; `pvq verify` passes against it; a failed write leaves no archive."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest

from figures.archive import MANIFEST, write_archive
from figures.registry import load_catalog, synthetic_tables
from pvq.cli import main
from measure.records.store import write_table
from theory.errors import PvqError

load_catalog()
EXPERIMENTS = {"model-free": "theory_kurtosis_bits", "toy-model": "model_summary"}
PAPER_FILES = {"figures/toy.pdf": b"%PDF-1.4 toy", "figures/toy.png": b"\x89PNG toy", "figures/toy.json": b"{}",
               "tables/toy.tex": b"\\begin{tabular}{l}\\end{tabular}"}  # fmt: skip


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, Path]:
    """A results folder of synthetic tables and a paper folder with a rendered figure and table."""
    results, paper = tmp_path / "results", tmp_path / "paper"
    tables = synthetic_tables(list(EXPERIMENTS.values()))
    for folder, name in EXPERIMENTS.items():
        write_table(tables[name], results / folder / f"{name}.parquet", {"experiment": name})
    for name, content in PAPER_FILES.items():
        (paper / name).parent.mkdir(parents=True, exist_ok=True)
        (paper / name).write_bytes(content)
    (paper / "figures" / ".toy.pdf.x1.tmp").write_bytes(b"half written")
    return results, paper


def test_archive_round_trips_with_matching_hashes_and_verifies(built, tmp_path, capsys):
    results, paper = built
    archive = write_archive(tmp_path / "published" / "thesis.tar.gz", results, paper)
    unpacked = tmp_path / "unpacked"
    with tarfile.open(archive, "r:gz") as tar:
        names = tar.getnames()
        for member in tar.getmembers():
            (unpacked / member.name).parent.mkdir(parents=True, exist_ok=True)
            (unpacked / member.name).write_bytes(tar.extractfile(member).read())
    manifest = json.loads((unpacked / MANIFEST).read_text())
    tables = {f"results/{folder}/{name}{suffix}" for folder, name in EXPERIMENTS.items() for suffix in (".parquet",
              ".json")}  # fmt: skip
    expected = tables | {f"paper/{name}" for name in PAPER_FILES}
    assert set(manifest["files"]) == expected == set(names) - {MANIFEST}
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((unpacked / name).read_bytes()).hexdigest() == digest
    assert {"git_commit", "packages", "created_utc"} <= set(manifest)
    assert main(["verify", str(unpacked), "--results", str(results)]) == 0
    assert main(["verify", str(archive), "--results", str(results)]) == 0
    assert "2 tables: 2 match" in capsys.readouterr().out


def test_a_failed_write_keeps_the_previous_archive_and_leaves_no_temporary_file(built, tmp_path, monkeypatch):
    results, paper = built
    archive = tmp_path / "thesis.tar.gz"
    archive.write_bytes(b"previous archive")

    def fail(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tarfile.TarFile, "addfile", fail)
    with pytest.raises(OSError, match="disk full"):
        write_archive(archive, results, paper)
    assert archive.read_bytes() == b"previous archive"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["paper", "results", "thesis.tar.gz"]


def test_an_empty_results_folder_is_not_archived(tmp_path):
    with pytest.raises(PvqError, match="no result tables"):
        write_archive(tmp_path / "thesis.tar.gz", tmp_path / "results", tmp_path / "paper")
    assert not (tmp_path / "thesis.tar.gz").exists()


def test_figures_writes_the_archive_that_verify_accepts(tmp_path, capsys):
    folders = ["--results", str(tmp_path / "results"), "--out", str(tmp_path / "paper")]
    archive = tmp_path / "thesis.tar.gz"
    assert main(["figures", "--only", "sqnr_int_vs_pruning_gaussian", *folders, "--archive", str(archive)]) == 0
    assert f"archive: {archive}" in capsys.readouterr().out
    with tarfile.open(archive, "r:gz") as tar:
        names = set(tar.getnames())
    table, rendered = "results/model-free/theory_formats_gaussian", "paper/tables/sqnr_int_vs_pruning_gaussian"
    assert {f"{table}.parquet", f"{table}.json", f"{rendered}.tex", f"{rendered}.json", MANIFEST} <= names
    assert main(["verify", str(archive), "--results", str(tmp_path / "results")]) == 0


def test_an_archive_name_without_tar_gz_stops_before_any_work(tmp_path, capsys):
    argv = ["figures", "--only", "sqnr_int_vs_pruning_gaussian", "--results", str(tmp_path / "results"), "--out",
            str(tmp_path / "paper"), "--archive", str(tmp_path / "thesis.zip")]  # fmt: skip
    assert main(argv) == 2
    assert "thesis.zip" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()
