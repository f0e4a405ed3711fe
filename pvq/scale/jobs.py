"""One job of an experiment grid: what it is, how it runs, and how a finished one is recognised.

A :class:`Job` is one model × compression spec × evaluation × seed of a grid file
(:mod:`pvq.scale.grid_file`). Its kind says where its result goes:

* ``eval`` (perplexity, an lm-eval task): exactly what ``pvq eval`` computes, through the same function
  (:func:`measure.evaluation.request.run_evaluation`), so
  the result lands in the evaluation cache ``<results>/eval/cache/`` under the cache key
  (:mod:`measure.records.cache_key`) that ``pvq eval`` and the figures read;
* ``experiment`` (a figure experiment of :mod:`figures.catalog`): :func:`figures.experiments.run_one`,
  the function ``pvq figures`` uses, so the table lands at ``<results>/<model>/<name>.parquet`` under the
  cache key ``pvq figures`` recomputes, and ``make figures`` finds it fresh.

Both caches write each result atomically (temporary file, then rename). When the work succeeded, the
job writes its *marker* ``<results>/runs/<job id>.json`` (atomically, last); a job without a marker is
not finished, so a job killed midway leaves no result and no marker and runs again next time. A failed
job records its error and traceback in ``<results>/runs/<job id>.failed.json`` for the report.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from figures.experiments import ExperimentContext, code_version, lookup, run_one, stored_key
from figures.registry import load_catalog
from measure.capture.memory import format_bytes, is_cuda, start_reading, update_reading
from measure.capture.placement import DEFAULT_DTYPE, resolve_device, resolve_dtype
from measure.evaluation.lmeval import TASK_FILES_SOURCE, TASKS
from measure.evaluation.request import EvaluationRequest, run_evaluation
from measure.evaluation.results import NO_SPEC
from measure.models.defaults import DEFAULT_MODEL
from measure.models.load import load_model
from measure.records.atomic import write_text_atomic
from measure.records.cache_key import DATA_SOURCES, CacheKey, data_digests, environment
from measure.records.code_version import modules_version
from measure.records.provenance import collect
from measure.records.store import read_provenance

RUNS_DIR = "runs"
EVAL_DIR = "eval"
EVAL_KIND = "eval"
EXPERIMENT_KIND = "experiment"
PERPLEXITY = "ppl"

log = logging.getLogger("pvq.scale.jobs")


@dataclass(frozen=True)
class Resources:
    """What one job asks of a cluster node (SLURM ``sbatch`` options; see :mod:`pvq.scale.executors`)."""

    gpus: int = 0
    cpus: int = 1
    mem_gb: float | None = None
    timeout_min: int = 60
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: tuple[str, ...] = ()
    array_parallelism: int | None = None


@dataclass(frozen=True)
class Job:
    """One unit of work; ``identity()`` (hence ``job_id``) leaves out where and how it runs.

    ``model`` is None for a model-free experiment; ``seed`` is None for an ``eval`` job (evaluations are
    deterministic: fixed token windows and deterministic compression); ``options`` are ``pvq eval``
    options as (name, value) pairs.
    """

    kind: str
    evaluation: str
    model: str | None
    spec: str = NO_SPEC
    seed: int | None = None
    dtype: str = DEFAULT_DTYPE
    options: tuple[tuple[str, int], ...] = ()
    device: str = "auto"
    results: str = "results"
    resources: Resources = field(default_factory=Resources)

    def identity(self) -> dict[str, Any]:
        """What the result depends on: kind, evaluation, model, spec, seed, dtype and options."""
        return {
            "kind": self.kind, "evaluation": self.evaluation, "model": self.model, "spec": self.spec,
            "seed": self.seed, "dtype": self.dtype, "options": dict(self.options),
        }

    @property
    def job_id(self) -> str:
        """sha256 (first 16 hex digits) of the canonical JSON of :meth:`identity`: stable across runs."""
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def sort_key(self) -> tuple:
        """Order of jobs in a grid: model, evaluation, spec, seed, dtype, options."""
        return (self.model or "", self.evaluation, self.spec, -1 if self.seed is None else self.seed,
                self.dtype, self.options)

    def label(self) -> str:
        """Short human-readable name, e.g. ``smollm2-135m | gptq:4 | ppl``."""
        parts = [self.model or "model-free", self.spec, self.evaluation]
        if self.seed is not None:
            parts.append(f"seed {self.seed}")
        return " | ".join(parts)

    @property
    def runs_dir(self) -> Path:
        """``<results>/runs``: markers, failure records and per-job logs."""
        return Path(self.results) / RUNS_DIR

    @property
    def marker_path(self) -> Path:
        """``<results>/runs/<job id>.json``, written when the job finished."""
        return self.runs_dir / f"{self.job_id}.json"

    @property
    def failure_path(self) -> Path:
        """``<results>/runs/<job id>.failed.json``, written when the job raised."""
        return self.runs_dir / f"{self.job_id}.failed.json"

    @property
    def log_path(self) -> Path:
        """``<results>/runs/logs/<job id>.log`` (local executor; submitit keeps its own logs)."""
        return self.runs_dir / "logs" / f"{self.job_id}.log"

    def to_json(self) -> str:
        """The job as JSON (:func:`job_from_json` reads it back)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def job_from_json(text: str) -> Job:
    """The :class:`Job` written by :meth:`Job.to_json`."""
    fields = json.loads(text)
    resources = fields.pop("resources")
    resources["setup"] = tuple(resources["setup"])
    fields["options"] = tuple(tuple(pair) for pair in fields["options"])
    return Job(**fields, resources=Resources(**resources))


def data_read(job: Job) -> list[str]:
    """The data sources ``job`` reads, as known without running it: an experiment's, from the sidecar of its
    table (none before it ran; a source no longer declared is left out, its reader's code changed); a task
    evaluation's task files."""
    if job.kind == EXPERIMENT_KIND:
        context = ExperimentContext(model_name=job.model or DEFAULT_MODEL, results_root=Path(job.results))
        path = context.result_path(_experiment(job.evaluation))
        names = read_provenance(path).get("data_read", ()) if stored_key(path) is not None else ()
        return [name for name in names if name in DATA_SOURCES]
    return [TASK_FILES_SOURCE] if job.evaluation in TASKS else []


def fingerprint(job: Job) -> str:
    """What a finished job's marker must match: the digest of the job's :class:`CacheKey` as far as it is known
    without loading the model (its identity, the code version of what it runs, the data it reads
    (:func:`data_read`) and the environment).

    An edit of the code an experiment or an evaluation runs, of a data file it reads or a library version makes
    the marker stale, so the job runs again and its result cache (which also sees the weights) decides whether
    anything is recomputed.
    """
    if job.kind == EXPERIMENT_KIND:
        code = code_version(_experiment(job.evaluation))
    else:
        code = modules_version([run_evaluation.__module__])
    data = data_digests(data_read(job))
    key = CacheKey(kind=job.kind, config=job.identity(), seed=job.seed, code=code, data=data,
                   environment=environment(job.device, job.dtype))  # fmt: skip
    return f"{job.job_id}:{key.digest}"


def is_finished(job: Job) -> bool:
    """True when the job's marker exists and matches :func:`fingerprint`."""
    try:
        marker = json.loads(job.marker_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return marker.get("fingerprint") == fingerprint(job)


def last_failure(job: Job) -> str | None:
    """The error message of the job's last failed attempt, or None."""
    try:
        return json.loads(job.failure_path.read_text())["error"]
    except (OSError, json.JSONDecodeError, KeyError):
        return None


def _experiment(name: str) -> Any:
    load_catalog()
    return lookup([name])[0]


def model_loader(dtype: str) -> Callable[[str, str], Any]:
    """``load(name, device)`` loading in ``dtype``; a non-float32 load gets ``+<dtype>`` on its model hash
    (:func:`measure.models.load.load_model`), so its results do not share cache entries with float32 ones."""

    def load(name: str, device: str) -> Any:
        return load_model(name, device=device, dtype=resolve_dtype(dtype))

    return load


def run_experiment_job(job: Job, device: str) -> list[str]:
    """Run (or find fresh) the figure experiment through :func:`figures.experiments.run_one`."""

    context = ExperimentContext(
        model_name=job.model or DEFAULT_MODEL, results_root=Path(job.results), device=device,
        seed=job.seed or 0, load_model=model_loader(job.dtype),
    )
    run = run_one(_experiment(job.evaluation), context)
    log.info("experiment %s: %s in %.1f s -> %s", job.evaluation, run.status, run.seconds, run.path)
    return [str(run.path)]


def eval_request(job: Job, device: str) -> EvaluationRequest:
    """The :class:`measure.evaluation.request.EvaluationRequest` of an ``eval`` job (what ``pvq eval`` runs)."""
    ppl = job.evaluation == PERPLEXITY
    return EvaluationRequest(
        model=str(job.model), out=Path(job.results) / EVAL_DIR, spec=None if job.spec == NO_SPEC else job.spec,
        tasks=() if ppl else (job.evaluation,), ppl=ppl, device=device, dtype=job.dtype, **dict(job.options),
    )


def run_eval_job(job: Job, device: str) -> list[str]:
    """Evaluate one (model, spec, evaluation) as ``pvq eval`` does; its result cache makes a rerun free."""
    request = eval_request(job, device)
    log.info("evaluate %s", request)
    return [str(run_evaluation(request).table)]


JOB_KINDS: Mapping[str, Callable[[Job, str], list[str]]] = {
    EVAL_KIND: run_eval_job,
    EXPERIMENT_KIND: run_experiment_job,
}


def _configure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")


def run_job(job: Job) -> dict[str, Any]:
    """Run ``job``; on success write its marker (returned), on error its failure record, then re-raise.

    The marker records the outputs, wall time and peak memory in bytes (``memory``: process RSS, and the
    CUDA allocator's peak under the device name on a GPU).
    """

    _configure_logging()
    log.info("job %s: %s", job.job_id, job.label())
    start = time.perf_counter()
    rss = start_reading("cpu")
    try:
        device = resolve_device(job.device)
        accelerator = start_reading(device) if is_cuda(device) else None
        outputs = JOB_KINDS[job.kind](job, device)
    except BaseException as error:
        record = {"job": job.identity(), "error": f"{type(error).__name__}: {error}",
                  "traceback": traceback.format_exc(), "host": os.uname().nodename}
        write_text_atomic(job.failure_path, json.dumps(record, indent=1, default=str))
        raise
    memory = {"rss": update_reading(rss).peak_bytes}
    if accelerator is not None:
        memory[device] = update_reading(accelerator).peak_bytes
    marker = collect(
        job=job.identity(), job_id=job.job_id, fingerprint=fingerprint(job), outputs=outputs, device=device,
        seconds=round(time.perf_counter() - start, 3), memory=memory,
    )
    write_text_atomic(job.marker_path, json.dumps(marker, indent=1, default=str))
    job.failure_path.unlink(missing_ok=True)
    log.info("job %s finished in %.1f s; peak memory %s", job.job_id, marker["seconds"],
             ", ".join(f"{where} {format_bytes(value)}" for where, value in memory.items()))
    return marker


def main(argv: list[str] | None = None) -> int:
    """``python -m pvq.scale.jobs JOB.json``: run the job in a JSON file (how the local executor runs jobs)."""
    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) != 1:
        print("usage: python -m pvq.scale.jobs JOB.json", file=sys.stderr)
        return 2
    run_job(job_from_json(Path(arguments[0]).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
