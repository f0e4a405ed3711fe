"""`pvq verify REFERENCE`: do this checkout's result tables equal a published reference?

REFERENCE is a results folder (``<folder>/<model or model-free>/<name>.parquet``), a folder holding one (an
unpacked archive of `pvq figures --archive`), or such a ``.tar.gz`` archive itself. Tables are compared by
:mod:`measure.records.compare`; one line per table, exit status 0 when every table matches, 1 otherwise.
"""

from __future__ import annotations

import argparse
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from measure.records.store import ARCHIVE_SUFFIXES, RESULTS_DIR, TABLE_SUFFIX, find_tables
from theory.errors import PvqError

HELP = "Compare this checkout's result tables with a reference results folder or archive, table by table."
DEFAULT_RTOL = 1e-6  # largest accepted |here - reference| / |reference| of a number (dimensionless)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`pvq verify REFERENCE [--results DIR] [--rtol R]`."""
    parser.add_argument("reference", type=Path, help="published results: a results folder, a folder holding "
                        "results/, or a .tar.gz archive")
    parser.add_argument("--results", type=Path, default=Path(RESULTS_DIR),
                        help=f"this checkout's results folder (default: {RESULTS_DIR}/)")
    parser.add_argument("--rtol", type=float, default=DEFAULT_RTOL,
                        help="largest accepted relative difference |here - reference| / |reference| of a number "
                        f"(default: {DEFAULT_RTOL:g}; wall-clock columns are not compared)")


def is_archive(path: Path) -> bool:
    """True for a ``.tar.gz`` / ``.tgz`` file."""
    return path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES)


def extract_tables(archive: Path, into: Path) -> Path:
    """Unpack only the result tables (``results/<folder>/<name>.parquet``) of an archive into ``into``; return
    ``into``. Any other member, and any name that would leave ``into``, is skipped."""
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            parts = PurePosixPath(member.name).parts
            wanted = (len(parts) == 3 and parts[0] == RESULTS_DIR and parts[2].endswith(TABLE_SUFFIX)
                      and not any(part.startswith(".") for part in parts[1:]) and member.isfile())  # fmt: skip
            source = tar.extractfile(member) if wanted else None
            if source is not None:
                target = into / parts[1] / parts[2]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(source.read())
    return into


def results_folder(reference: Path) -> Path:
    """The results folder inside a reference folder: ``<reference>/results`` when present, else the folder."""
    if not reference.is_dir():
        raise PvqError(f"reference {reference} is neither a folder nor a .tar.gz archive")
    nested = reference / RESULTS_DIR
    return nested if nested.is_dir() else reference


def verify(here: Path, reference: Path, rtol: float) -> int:
    """Print one line per table and a summary; 0 when every table matches, else 1."""
    from measure.records.compare import compare_folders, tally

    if not find_tables(reference):
        raise PvqError(f"no result tables in {reference} (expected <folder>/<model or model-free>/<name>.parquet)")
    verdicts = compare_folders(here, reference, rtol)
    for verdict in verdicts:
        print(verdict.line())
    print(tally(verdicts))
    return 0 if all(verdict.status == "match" for verdict in verdicts) else 1


def run(args: argparse.Namespace) -> int:
    """Check the arguments, find the reference tables (unpacking an archive), compare and report."""
    if args.rtol < 0:
        raise PvqError(f"--rtol must be 0 or more, got {args.rtol}")
    if not args.results.is_dir():
        raise PvqError(f"results folder {args.results} does not exist; run `make figures` first or pass --results")
    if not is_archive(args.reference):
        return verify(args.results, results_folder(args.reference), args.rtol)
    with tempfile.TemporaryDirectory(prefix="pvq-verify-") as unpacked:
        return verify(args.results, extract_tables(args.reference, Path(unpacked)), args.rtol)
