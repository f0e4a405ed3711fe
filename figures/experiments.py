"""Experiments: named computations from a config (and maybe a model) to a result table, cached on disk.

An experiment is declared once with :func:`experiment`; its table lives at
``<results>/<model>/<name>.parquet`` (``<results>/model-free/`` when it needs no model) with a JSON
sidecar (:func:`measure.records.store.write_table`) that holds its cache key. The table is *fresh* when the
stored key equals the current one, otherwise it is recomputed. Experiments run one at a time and each
is written atomically, so an interrupted run keeps every finished table and resumes after the last one.

The cache key is :class:`measure.records.cache_key.CacheKey` (one key for every cached result): the experiment's
name and config, the seed, the model id, hash and the content hash of its weights (or none), the *code version*,
the content hash of every data source the experiment read (recorded while it ran and listed in the sidecar, so
the next run recomputes their hashes without running it), and the environment (library versions, device type,
dtype). The *code version* (:mod:`measure.records.code_version`) hashes the code the experiment runs, found from
its imports: its function (without decorators, comments or layout), the helpers of its module it calls, and the
source of every project module in their import closure. We do not key on the git commit: it changes with every
commit, even one that only edits a caption or the README, which would rerun many minutes of model experiments; it
misses uncommitted edits; and it is unknown outside a checkout.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd
from tqdm import tqdm

from figures.progress import ExperimentProgress, last_runtime
from figures.quiet import quiet_unless
from measure.models.load import load_model
from measure.models.weight_grid import detect_linear_grid
from measure.records.cache_key import CacheKey, data_digests, environment, reading
from measure.records.canonical import canonical_json
from measure.records.code_version import code_modules, code_version_of
from measure.records.provenance import collect
from measure.records.store import read_provenance, read_table, write_table
from theory.errors import PvqError

MODEL_FREE_DIR = "model-free"
NO_MODEL = {"model_name": None, "model_id": None, "model_hash": None, "grid_detection": "not applicable: no model"}

Compute = Callable[[Mapping[str, Any], "ExperimentContext"], pd.DataFrame]
Synthetic = Callable[[np.random.Generator], pd.DataFrame]
Check = Callable[[Mapping[str, Any], "ExperimentContext"], None]


@dataclass(frozen=True)
class Experiment:
    """A declared computation: ``compute(config, context) -> DataFrame``.

    ``synthetic(rng)`` returns a small table with the same columns, used by the tests to render every
    figure without running anything. ``check(config, context)``, when declared, refuses (PvqError) a config the
    context's model cannot take, from its config and module structure alone: no data, no forward pass.
    """

    name: str
    compute: Compute
    config: Mapping[str, Any]
    synthetic: Synthetic
    needs_model: bool = False
    check: Check | None = None


EXPERIMENTS: dict[str, Experiment] = {}


def experiment(
    name: str, *, config: Mapping[str, Any], synthetic: Synthetic, needs_model: bool = False,
    check: Check | None = None,
) -> Callable[[Compute], Compute]:
    """Register the decorated ``compute(config, context) -> DataFrame`` as experiment ``name`` (``check``: its
    settings check against the model, :attr:`Experiment.check`)."""
    canonical_json(config)

    def register(compute: Compute) -> Compute:
        if name in EXPERIMENTS:
            raise PvqError(f"experiment {name!r} is registered twice; give each experiment a unique name")
        EXPERIMENTS[name] = Experiment(name, compute, dict(config), synthetic, needs_model, check)
        return compute

    return register


def check_experiments(experiments: Sequence[Experiment], context: ExperimentContext) -> None:
    """Every declared :attr:`Experiment.check` of ``experiments`` against the context's model (loaded on first
    use), before any of them runs; one PvqError naming the experiment and the model for the first refusal."""
    for exp in experiments:
        if exp.check is not None:
            try:
                exp.check(dict(exp.config), context)
            except PvqError as error:
                raise PvqError(f"experiment {exp.name!r} on {context.model_name}: {error}") from None


def code_version(exp: Experiment) -> str:
    """The code version of ``exp`` (:func:`measure.records.code_version.code_version_of` of its function)."""
    return code_version_of(exp.compute)


def model_slug(model_name: str) -> str:
    """A directory name for a model name or path (``/`` and other separators become ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model_name.strip("/")) or "model"


def _load_model(model_name: str, device: str) -> Any:
    return load_model(model_name, device=device)


def _detect_grid(loaded: Any) -> dict[str, Any]:
    return detect_linear_grid(loaded.model).as_dict()


def _write_step(text: str) -> None:
    tqdm.write(text, file=sys.stderr)


@dataclass
class ExperimentContext:
    """What an experiment may use: model name, device, seed, results folder and a lazily loaded model.

    ``load_model(name, device)`` defaults to :func:`measure.models.load.load_model` and ``detect_grid(loaded)``
    to :func:`measure.models.weight_grid.detect_linear_grid` over the model's block linears; tests pass toy
    versions.
    The model is loaded only when an experiment that needs it is keyed or run. An experiment reports its
    steps with :meth:`step`; :func:`ensure` shows them on its progress bar (``on_step``).
    """

    model_name: str
    results_root: Path
    device: str = "cpu"
    seed: int = 0
    load_model: Callable[[str, str], Any] = _load_model
    detect_grid: Callable[[Any], dict[str, Any]] = _detect_grid
    on_step: Callable[[str], None] = field(default=_write_step, repr=False)
    _loaded: Any = field(default=None, init=False, repr=False)
    _grid: dict[str, Any] | None = field(default=None, init=False, repr=False)

    @property
    def model(self) -> Any:
        """The model, loaded on first use and kept for the following experiments."""
        if self._loaded is None:
            self._loaded = self.load_model(self.model_name, self.device)
        return self._loaded

    def step(self, text: str) -> None:
        """Report a step of the running experiment (e.g. ``"ledger measured (41.2 s)"``)."""
        self.on_step(text)

    @property
    def results_dir(self) -> Path:
        """Where this model's experiment tables live."""
        return Path(self.results_root) / model_slug(self.model_name)

    def model_identity(self) -> dict[str, Any]:
        """Model id, hash and the content hash of its weights (what keys the cache); loads the model on first
        call."""
        loaded = self.model
        return {"model_id": loaded.model_id, "model_hash": loaded.model_hash, "weights": loaded.weights_sha256}

    def model_facts(self) -> dict[str, Any]:
        """Name, id, hash, source and grid detection of the model (detection runs once)."""
        if self._grid is None:
            self._grid = self.detect_grid(self.model)
        return {"model_name": self.model_name, **self.model.describe(), "grid_detection": self._grid}

    def result_path(self, exp: Experiment) -> Path:
        """``<results>/<model>/<name>.parquet``, or ``<results>/model-free/<name>.parquet``."""
        folder = self.results_dir if exp.needs_model else Path(self.results_root) / MODEL_FREE_DIR
        return folder / f"{exp.name}.parquet"


def experiment_key(exp: Experiment, context: ExperimentContext, data: Iterable[str] = ()) -> CacheKey:
    """The :class:`CacheKey` of ``exp`` in ``context`` having read the data sources ``data`` (module docstring); a
    model-free experiment runs on no device."""
    model = context.model_identity() if exp.needs_model else None
    device, dtype = (context.device, context.model.model.dtype) if exp.needs_model else (None, None)
    return CacheKey(
        kind=exp.name, config={"config": exp.config, "model": model}, seed=context.seed,
        weights=None if model is None else model["weights"], code=code_version(exp), data=data_digests(data),
        environment=environment(device, dtype),
    )  # fmt: skip


def cache_key(exp: Experiment, context: ExperimentContext, data: Iterable[str] = ()) -> str:
    """The digest of :func:`experiment_key`."""
    return experiment_key(exp, context, data).digest


@dataclass(frozen=True)
class ExperimentRun:
    """The outcome of :func:`ensure` for one experiment."""

    name: str
    status: str  # "computed" or "cached"
    path: Path
    seconds: float
    provenance: dict[str, Any]

    def table(self) -> pd.DataFrame:
        """The result table."""
        return read_table(self.path)


def stored_key(path: Path) -> str | None:
    """The cache key recorded next to a result table, or None if the table or sidecar is missing."""
    if not path.exists():
        return None
    try:
        return read_provenance(path).get("cache_key")
    except (OSError, json.JSONDecodeError):
        return None


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's global and (if imported) torch's generators."""
    random.seed(seed)
    np.random.seed(seed)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


def cached_run(exp: Experiment, context: ExperimentContext) -> ExperimentRun | None:
    """``exp``'s stored table as a cached run when the key recorded beside it is its current key (over the data
    sources it read last time), else None."""
    path = context.result_path(exp)
    stored = stored_key(path)
    if stored is None:
        return None
    provenance = read_provenance(path)
    try:
        fresh = stored == cache_key(exp, context, provenance.get("data_read", ()))
    except PvqError:  # a data source it read is no longer declared
        return None
    return ExperimentRun(exp.name, "cached", path, 0.0, provenance) if fresh else None


def compute_run(exp: Experiment, context: ExperimentContext) -> ExperimentRun:
    """Compute ``exp`` and store its table atomically, with its cache key (over the data sources it read), the
    names of those sources and its runtime in the sidecar."""
    path = context.result_path(exp)
    seed_everything(context.seed)
    start = time.perf_counter()
    with reading() as reads:
        table = exp.compute(dict(exp.config), context)
    seconds = time.perf_counter() - start
    if not isinstance(table, pd.DataFrame):
        raise PvqError(f"experiment {exp.name!r} returned {type(table).__name__}; it must return a DataFrame")
    facts = context.model_facts() if exp.needs_model else NO_MODEL
    key = experiment_key(exp, context, reads)
    provenance = collect(
        experiment=exp.name, config=exp.config, cache_key=key.digest, cache_key_fields=key.as_dict(),
        data_read=sorted(reads), code_version=key.code,
        code=code_modules(exp.compute), seed=context.seed, device=context.device, runtime_s=round(seconds, 3),
        **facts,
    )
    path.unlink(missing_ok=True)  # a new sidecar must never sit beside the old table
    write_table(table, path, provenance)
    return ExperimentRun(exp.name, "computed", path, seconds, provenance)


def run_one(exp: Experiment, context: ExperimentContext) -> ExperimentRun:
    """Return ``exp``'s cached table if its key matches, else compute and store it atomically."""
    return cached_run(exp, context) or compute_run(exp, context)


@contextlib.contextmanager
def _steps_to(context: ExperimentContext, report: Callable[[str], None]) -> Iterator[None]:
    previous, context.on_step = context.on_step, report
    try:
        yield
    finally:
        context.on_step = previous


def ensure(
    experiments: Sequence[Experiment], context: ExperimentContext, *, verbose: bool = True,
    stream: TextIO | None = None,
) -> dict[str, ExperimentRun]:
    """Reuse every fresh table; run the missing or stale experiments one at a time.

    On ``stream`` (default: stderr) a bar runs over ``experiments`` and each experiment that runs is
    announced with its position and an estimate from its last run (:mod:`figures.progress`); its
    :meth:`ExperimentContext.step` reports go to the bar. Unless ``verbose``, third-party output while an
    experiment is keyed (which may load the model) and run is dropped (:mod:`figures.quiet`).
    """
    runs: dict[str, ExperimentRun] = {}
    with ExperimentProgress(len(experiments), stream) as progress:
        for index, exp in enumerate(experiments, start=1):
            with quiet_unless(verbose):
                run = cached_run(exp, context)
            if run is None:
                progress.start(index, exp.name, last_runtime(context.result_path(exp)))
                with quiet_unless(verbose), _steps_to(context, progress.step):
                    run = compute_run(exp, context)
            runs[exp.name] = run
            progress.advance()
    return runs


def lookup(names: Sequence[str]) -> list[Experiment]:
    """The registered experiments called ``names`` (in that order), or a clear error."""
    missing = [name for name in names if name not in EXPERIMENTS]
    if missing:
        raise PvqError(
            f"unknown experiment(s) {', '.join(missing)}; registered: {', '.join(sorted(EXPERIMENTS)) or 'none'}"
        )
    return [EXPERIMENTS[name] for name in names]
