"""Provenance records: what produced a result (package versions, git commit, model, seed, protocol)."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

TRACKED_PACKAGES = (
    "torch", "transformers", "numpy", "scipy", "cvxpy", "pandas", "pyarrow",
    "matplotlib", "seaborn", "lm_eval", "datasets", "gguf", "safetensors", "pvq",
)
REPO_ROOT = Path(__file__).resolve().parent.parent


def package_versions() -> dict[str, str]:
    """Installed version of every package a result may depend on ("absent" when not installed)."""
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def git_commit() -> str:
    """The commit of the pvq checkout, with ``+dirty`` when the work tree has uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def collect(**fields: Any) -> dict[str, Any]:
    """A provenance record: environment facts plus the caller's fields (model, seed, protocol, ...)."""
    return {
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        **fields,
    }
