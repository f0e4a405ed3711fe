"""`pvq figures --archive FILE.tar.gz`: the result tables and the rendered artifacts in one file to publish.

Inside the archive: ``results/<model or model-free>/<name>.parquet`` with each table's provenance sidecar
``<name>.json``, the rendered ``paper/figures/*`` and ``paper/tables/*`` (with their sidecars), and
``manifest.json``: the provenance facts of the packing run (git commit, package versions, time) and the
sha256 of every other member. The archive is written to a temporary file renamed into place, so an
interrupted run never leaves a partial archive. `pvq verify FILE.tar.gz` compares a checkout against it.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

from figures.registry import OUTPUT_FOLDERS
from measure.records.atomic import atomic_path
from measure.models.fetch import sha256_file
from measure.records.provenance import collect
from measure.records.store import RESULTS_DIR, find_tables, sidecar_path
from theory.errors import PvqError

MANIFEST = "manifest.json"
PAPER_DIR = "paper"


def archive_members(results: Path, out: Path) -> dict[str, Path]:
    """``{name inside the archive: file on disk}``: every result table and its sidecar, then every file of the
    paper folder's figure and table folders (hidden and temporary files left out)."""
    members = {}
    for name, table in find_tables(results).items():
        members[f"{RESULTS_DIR}/{name}{table.suffix}"] = table
        if sidecar_path(table).is_file():
            members[f"{RESULTS_DIR}/{name}.json"] = sidecar_path(table)
    for folder in sorted(OUTPUT_FOLDERS.values()):
        files = sorted(path for path in (Path(out) / folder).glob("*") if path.is_file() and path.name[0] != ".")
        members.update({f"{PAPER_DIR}/{folder}/{path.name}": path for path in files})
    return members


def manifest(members: dict[str, Path]) -> dict[str, object]:
    """Provenance of the packing run plus ``files``: the sha256 (hex) of every member, by archive name."""
    return collect(files={name: sha256_file(path) for name, path in members.items()})


def write_archive(target: Path, results: Path, out: Path) -> Path:
    """Pack ``results`` and ``out``'s figures and tables with a manifest into the gzip tar ``target``."""
    members = archive_members(results, out)
    if not any(name.startswith(f"{RESULTS_DIR}/") for name in members):
        raise PvqError(f"no result tables in {results} to archive; run `pvq figures` first")
    record = json.dumps(manifest(members), indent=2, sort_keys=True).encode()
    with atomic_path(target) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for name, path in members.items():
            tar.add(path, arcname=name, recursive=False)
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mtime = len(record), int(time.time())
        tar.addfile(info, io.BytesIO(record))
    return Path(target)
