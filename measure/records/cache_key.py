"""The one cache key of every cached result: ``pvq eval`` rows, ``pvq run`` jobs and figure experiments.

A cached result is reused exactly when everything that can change its numbers is unchanged. That is the
:class:`CacheKey`, whose digest (sha256 of its canonical JSON, 24 hex digits) names or guards the stored result:

* ``kind``: what was computed (an experiment's name, an evaluation task, a job's evaluation);
* ``config``: its settings (an experiment's config; an evaluation's spec, protocol and the calibration protocol
  the spec was compressed with);
* ``seed``: the random seed (None for deterministic work);
* ``weights``: the identity of the weights actually loaded, a content hash of the checkpoint's weight files
  (for a GGUF, of the converted safetensors, so a change in the dequantizer is a change of weights);
* ``code``: the code version of what ran (:mod:`measure.records.code_version`, from the import closure);
* ``data``: ``{source: content hash}`` of every data file read (task YAMLs and helpers, the cleaned text,
  benchmark datasets). Each source declares its digest once with :func:`data_source`; a reader calls
  :func:`note_read`, and :func:`reading` collects the sources a computation read;
* ``environment``: what changes numbers outside the project (:func:`environment`: torch, transformers and
  lm-eval versions, device type, dtype).

Derived files (converted checkpoints, the cleaned text) are stored under :func:`derived_name`, keyed by the
code that produced them, so a producer edit makes a new file instead of reusing a stale one.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from measure.records.canonical import canonical_json
from measure.records.code_version import code_version_of
from theory.errors import PvqError

ENVIRONMENT_PACKAGES = ("torch", "transformers", "lm_eval")
"""Third-party packages whose version changes numbers (kernels, model code, the evaluation harness)."""
DIGEST_HEX = 24


@dataclass(frozen=True)
class CacheKey:
    """Everything that fixes a cached result (see the module docstring for each field)."""

    kind: str
    config: Mapping[str, Any] = field(default_factory=dict)
    seed: int | None = None
    weights: str | None = None
    code: str = ""
    data: Mapping[str, str] = field(default_factory=dict)
    environment: Mapping[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The key as plain data (recorded in provenance beside the digest)."""
        return asdict(self)

    @property
    def digest(self) -> str:
        """sha256 (first 24 hex digits) of the canonical JSON of every field."""
        return hashlib.sha256(canonical_json(self.as_dict(), stringify=True).encode()).hexdigest()[:DIGEST_HEX]


def package_version(name: str) -> str:
    """The installed version of ``name``, or ``absent``."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def environment(device: str | None, dtype: Any) -> dict[str, str]:
    """The environment that changes numbers: :data:`ENVIRONMENT_PACKAGES` versions, the device *type*
    (``cuda:1`` is ``cuda``; None for work that runs on no device) and the dtype (``torch.float16`` is
    ``float16``)."""
    versions = {name: package_version(name) for name in ENVIRONMENT_PACKAGES}
    device_type = None if device is None else str(device).split(":")[0]
    return {**versions, "device": str(device_type), "dtype": str(dtype).removeprefix("torch.")}


def derived_name(stem: str, producer: Callable[..., Any], *inputs: str, packages: Iterable[str] = ()) -> str:
    """``<stem>-<digest>``: the name of a file derived from ``inputs`` (content hashes) by the function
    ``producer`` (its code version: the function, the helpers it calls and the modules they import) and by the
    third-party ``packages`` (their versions)."""
    versions = [f"{name}=={package_version(name)}" for name in packages]
    text = "\0".join([code_version_of(producer), *versions, *inputs])
    return f"{stem}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


DATA_SOURCES: dict[str, Callable[[], str]] = {}
"""Data source name -> its content hash (recomputed on every call; sources memoize their own file hashes)."""
_READS: list[set[str]] = []


def data_source(name: str, digest: Callable[[], str]) -> None:
    """Declare the data source ``name`` and the function giving its current content hash (declared once, at
    import, by the module that reads it)."""
    DATA_SOURCES[name] = digest


def note_read(name: str) -> None:
    """Record that the running computation reads the data source ``name`` (in every active :func:`reading`)."""
    if name not in DATA_SOURCES:
        raise PvqError(f"unknown data source {name!r}; declared: {', '.join(sorted(DATA_SOURCES))}")
    for reads in _READS:
        reads.add(name)


@contextlib.contextmanager
def reading() -> Iterator[set[str]]:
    """Collect the names of the data sources read inside the block (nested blocks each see their reads)."""
    reads: set[str] = set()
    _READS.append(reads)
    try:
        yield reads
    finally:
        _READS.remove(reads)


def data_digests(names: Iterable[str]) -> dict[str, str]:
    """``{name: current content hash}`` of the data sources ``names``."""
    unknown = sorted(set(names) - set(DATA_SOURCES))
    if unknown:
        raise PvqError(f"unknown data source(s) {', '.join(unknown)}; declared: {', '.join(sorted(DATA_SOURCES))}")
    return {name: DATA_SOURCES[name]() for name in sorted(set(names))}


CHUNK_BYTES = 1 << 22
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """:func:`sha256_file`, memoized by (path, size, modification time) in this process."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    memo = (str(resolved), stat.st_size, stat.st_mtime_ns)
    if memo not in _FILE_DIGESTS:
        _FILE_DIGESTS[memo] = sha256_file(resolved)
    return _FILE_DIGESTS[memo]


def files_sha256(root: Path, paths: Iterable[Path]) -> str:
    """sha256 (16 hex digits) over the names (relative to ``root``) and contents of ``paths``."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + file_sha256(path).encode() + b"\0")
    return digest.hexdigest()[:16]


def tree_sha256(root: Path) -> str:
    """:func:`files_sha256` of every file under the folder ``root``."""
    return files_sha256(root, (path for path in root.rglob("*") if path.is_file()))
