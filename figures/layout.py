"""Where rendered artifacts live in the paper folder, so that several models sit side by side.

* model-free artifacts (every experiment they need is model-free, e.g. the Gaussian theory) are shared:
  ``<out>/figures/NAME.*`` and ``<out>/tables/NAME.*``;
* model-dependent artifacts live in the model's home ``<out>/<model>/figures/NAME.*`` and
  ``<out>/<model>/tables/NAME.*``, ``<model>`` being the model's results folder name
  (:func:`figures.experiments.model_slug`, the same as in ``results/<model>/``);
* artifacts that compare models live in ``<out>/cross-model/figures`` and ``<out>/cross-model/tables``.

Each rendered file has its JSON provenance sidecar beside it; a folder is a model's home when it holds a
``figures/`` or ``tables/`` folder with at least one sidecar.
"""

from __future__ import annotations

from pathlib import Path

from figures.experiments import lookup, model_slug
from figures.registry import OUTPUT_FOLDERS, Artifact

CROSS_MODEL_DIR = "cross-model"
NOT_MODEL_HOMES = frozenset({*OUTPUT_FOLDERS.values(), "sections", "build", CROSS_MODEL_DIR})
"""Folders of the paper folder that are never a model's home."""


def model_dependent(artifact: Artifact) -> bool:
    """True when any experiment the artifact draws from needs a model."""
    return any(exp.needs_model for exp in lookup(artifact.needs))


def model_home(out_dir: Path, model_name: str) -> Path:
    """``<out>/<model>``: the folder of one model's figures and tables."""
    return Path(out_dir) / model_slug(model_name)


def artifact_home(out_dir: Path, artifact: Artifact, model_name: str) -> Path:
    """The folder whose ``figures/`` or ``tables/`` receives ``artifact`` rendered for ``model_name``:
    the model's home when the artifact depends on the model, else the paper folder itself (shared)."""
    return model_home(out_dir, model_name) if model_dependent(artifact) else Path(out_dir)


def has_sidecars(home: Path) -> bool:
    """True when ``home/figures`` or ``home/tables`` holds at least one provenance sidecar."""
    return any(any((home / folder).glob("*.json")) for folder in OUTPUT_FOLDERS.values())


def model_homes(out_dir: Path) -> dict[str, Path]:
    """``{model folder name: home}`` of every model rendered into ``out_dir``, sorted by name."""
    root = Path(out_dir)
    if not root.is_dir():
        return {}
    homes = sorted(path for path in root.iterdir() if path.is_dir() and path.name not in NOT_MODEL_HOMES)
    return {home.name: home for home in homes if has_sidecars(home)}


def relative_stem(out_dir: Path, artifact: Artifact, home: Path) -> str:
    """``[<model>/]figures/NAME`` relative to the paper folder, with ``/`` separators (for LaTeX and HTML)."""
    return artifact.stem(home).relative_to(Path(out_dir)).as_posix()
