"""Toy experiments, a toy model loader and synthetic render facts for the figure tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from figures.experiments import EXPERIMENTS, Experiment, ExperimentContext
from figures.registry import Artifact

REQUIRED_PROVENANCE_KEYS = {
    "created_utc", "git_commit", "python", "packages", "model_id", "model_hash", "grid_detection", "seed",
    "protocol", "runtime_s", "experiments", "caption", "files", "artifact", "kind",
}


@dataclass
class ToyLoaded:
    """Stands in for ``measure.models.load.LoadedModel``."""

    model_id: str
    model_hash: str
    model: Any = field(default_factory=lambda: SimpleNamespace(dtype="float32"))
    weights_sha256: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "model_hash": self.model_hash, "model_source": "toy"}


@dataclass
class ToyModels:
    """A loader whose model hash the test can change, counting loads."""

    hashes: dict[str, str] = field(default_factory=lambda: {"toy": "hash-a"})
    loads: int = 0

    def load(self, name: str, device: str) -> ToyLoaded:
        self.loads += 1
        return ToyLoaded(name, self.hashes[name])


def toy_context(results: Path, models: ToyModels, model_name: str = "toy", seed: int = 0) -> ExperimentContext:
    """An experiment context over the toy loader, with a fixed grid detection."""
    return ExperimentContext(
        model_name=model_name, results_root=results, seed=seed, load_model=models.load,
        detect_grid=lambda loaded: {"verdict": "toy: no grid"},
    )


def toy_synthetic(rng: np.random.Generator) -> pd.DataFrame:
    return pd.DataFrame({"x": np.arange(4.0), "y": rng.normal(size=4)})


def make_counting_experiment(name: str, calls: list[str], config: dict | None = None,
                             needs_model: bool = True) -> Experiment:
    """A toy experiment that records each computation in ``calls`` and returns y = scale · x + seed."""

    def compute(cfg: dict, context: ExperimentContext) -> pd.DataFrame:
        calls.append(name)
        if needs_model:
            assert context.model.model_id == context.model_name
        x = np.arange(5.0)
        return pd.DataFrame({"x": x, "y": cfg["scale"] * x + context.seed})

    return Experiment(name, compute, config or {"scale": 2.0}, toy_synthetic, needs_model)


def synthetic_facts(artifact: Artifact) -> dict[str, Any]:
    """Render facts as :func:`figures.render.facts_from_runs` builds them, for synthetic tables."""
    return {
        "model_name": "toy", "model_id": "toy-model", "model_hash": "0123456789abcdef",
        "grid_detection": {"verdict": "toy: no grid"}, "seed": 0,
        "protocol": {name: dict(EXPERIMENTS[name].config) for name in artifact.needs},
        "experiments": {
            name: {"status": "synthetic", "cache_key": "none", "code_version": "none", "runtime_s": 0.0}
            for name in artifact.needs
        },
    }
