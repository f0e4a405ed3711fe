"""Run grid jobs on an existing engine: a local process pool, or submitit (SLURM job arrays, local, debug).

* ``local``: a pool of ``workers`` job processes (default: CPU cores ÷ cpus per job, and at most visible GPUs
  ÷ gpus per job), each job a fresh ``python -m pvq.scale.jobs JOB.json`` with ``OMP_NUM_THREADS`` = its cpus,
  ``CUDA_VISIBLE_DEVICES`` = the GPUs of its pool slot, and its own log ``<results>/runs/logs/<job id>.log``;
  a crash ends only that job's process.
* ``slurm``: submitit's SLURM executor; the jobs of each distinct resource request form one job array
  (``executor.batch()``), logs in ``<results>/runs/submitit/<array id>_<index>_*``. ``pvq run`` waits for the
  array (run it in tmux/screen, or rerun later: finished jobs are skipped).
* ``submitit-local``: submitit's local executor (every job its own process, all at once): the SLURM code
  path on a machine without SLURM.
* ``debug``: submitit's debug executor, every job in this process one after the other.

A job that fails is retried ``retries`` times (default once) and then reported with its error and log.
"""

from __future__ import annotations

import logging
import os
import queue
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from measure.records.atomic import write_text_atomic
from pvq.scale.jobs import Job, Resources, last_failure, run_job
from theory.errors import PvqError

JOB_NAME = "pvq"
SUBMITIT_DIR = "submitit"
SLURM_COMMANDS = ("sbatch", "srun")
SUBMITIT_CLUSTERS = {"slurm": "slurm", "submitit-local": "local", "debug": "debug"}
EXECUTORS = ("local", *SUBMITIT_CLUSTERS)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """How a job ended: ``error`` is None on success; ``log`` is where its output went; ``attempts`` ≥ 1."""

    job: Job
    error: str | None
    log: str | None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None


Backend = Callable[[Sequence[Job], int], list[Outcome]]


def check_slurm_available() -> None:
    """Raise one clear PvqError unless SLURM's ``sbatch`` and ``srun`` are on PATH."""
    missing = [command for command in SLURM_COMMANDS if shutil.which(command) is None]
    if missing:
        raise PvqError(
            f"--executor slurm needs SLURM, but {' and '.join(missing)} is not on PATH; run `pvq run` on the "
            "cluster's login node, or use --executor local here (--dry-run prints the sbatch script anywhere)"
        )


def default_workers(jobs: Sequence[Job]) -> int:
    """Jobs run side by side by the local executor: CPU cores ÷ the largest ``cpus`` a job asks (≥ 1)."""
    cpus = max((job.resources.cpus for job in jobs), default=1)
    return max(1, (os.cpu_count() or 1) // cpus)


def _error_of(job: Job, fallback: str) -> str:
    recorded = last_failure(job)
    return recorded if recorded is not None else f"{fallback} (killed before it could record an error)"


def visible_gpus() -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else every device torch counts."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [device.strip() for device in listed.split(",") if device.strip()]
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


def gpu_slots(jobs: Sequence[Job]) -> list[tuple[str, ...]] | None:
    """Disjoint sets of ``gpus`` visible GPUs, one per pool slot; None if no job asks for GPUs or too few exist."""
    per_job = max((job.resources.gpus for job in jobs), default=0)
    devices = visible_gpus() if per_job else []
    if not per_job or len(devices) < per_job:
        return None
    return [tuple(devices[k * per_job:(k + 1) * per_job]) for k in range(len(devices) // per_job)]


def _run_in_subprocess(job: Job, gpus: tuple[str, ...] | None) -> Outcome:
    job_file = job.runs_dir / "jobs" / f"{job.job_id}.json"
    write_text_atomic(job_file, job.to_json())
    job.log_path.parent.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, **{name: str(job.resources.cpus) for name in THREAD_VARIABLES}}
    if gpus is not None:
        environment["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    with open(job.log_path, "ab") as output:
        finished = subprocess.run(
            [sys.executable, "-m", "pvq.scale.jobs", str(job_file)], stdout=output, stderr=subprocess.STDOUT,
            env=environment, check=False,
        )
    error = None if finished.returncode == 0 else _error_of(job, f"exit code {finished.returncode}")
    return Outcome(job, error, str(job.log_path))


def run_local(jobs: Sequence[Job], workers: int) -> list[Outcome]:
    """Run ``jobs`` as separate processes, at most ``workers`` at a time (fewer if GPU slots run out)."""
    slots = gpu_slots(jobs)
    free: queue.Queue = queue.Queue()
    for slot in slots or [None] * workers:
        free.put(slot)
    workers = min(workers, free.qsize(), len(jobs))

    def run_in_slot(job: Job) -> Outcome:
        slot = free.get()
        try:
            return _run_in_subprocess(job, slot)
        finally:
            free.put(slot)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(run_in_slot, jobs))


def slurm_memory(gigabytes: float) -> str:
    """SLURM's ``--mem`` value: whole GB as ``<n>GB``, else ``<n>MB``."""
    return f"{int(gigabytes)}GB" if gigabytes == int(gigabytes) else f"{round(gigabytes * 1024)}MB"


def sbatch_parameters(resources: Resources) -> dict[str, Any]:
    """submitit SLURM parameters (``sbatch`` options) of one resource request."""
    parameters: dict[str, Any] = {"job_name": JOB_NAME, "time": resources.timeout_min,
                                  "cpus_per_task": resources.cpus}
    if resources.gpus:
        parameters["gpus_per_node"] = resources.gpus
    if resources.mem_gb is not None:
        parameters["mem"] = slurm_memory(resources.mem_gb)
    for name in ("partition", "account", "qos", "constraint", "array_parallelism"):
        if getattr(resources, name) is not None:
            parameters[name] = getattr(resources, name)
    if resources.setup:
        parameters["setup"] = list(resources.setup)
    return parameters


def submitit_parameters(resources: Resources, cluster: str) -> dict[str, Any]:
    """``AutoExecutor.update_parameters`` keywords: SLURM options, or the generic ones for local/debug."""
    if cluster == "slurm":
        return {f"slurm_{name}": value for name, value in sbatch_parameters(resources).items()}
    return {"name": JOB_NAME, "timeout_min": resources.timeout_min, "cpus_per_task": resources.cpus,
            "gpus_per_node": resources.gpus}


def resource_groups(jobs: Sequence[Job]) -> list[tuple[Resources, list[Job]]]:
    """Jobs grouped by resource request (one job array each), in order of first appearance."""
    groups: dict[Resources, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.resources, []).append(job)
    return list(groups.items())


def submitit_folder(jobs: Sequence[Job]) -> Path:
    """Where submitit keeps pickles and logs: ``<results>/runs/submitit/%j`` (one folder per job)."""
    return jobs[0].runs_dir / SUBMITIT_DIR / "%j"


def sbatch_scripts(jobs: Sequence[Job]) -> list[str]:
    """The ``sbatch`` script submitit would submit for each job array of ``jobs`` (for ``--dry-run``)."""
    from submitit.slurm.slurm import _make_sbatch_string

    folder = submitit_folder(jobs)
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return [
        _make_sbatch_string(command=command, folder=folder, map_count=len(group) if len(group) > 1 else None,
                            **sbatch_parameters(resources))
        for resources, group in resource_groups(jobs)
    ]


def submitit_backend(cluster: str) -> Backend:
    """A backend submitting through ``submitit.AutoExecutor(cluster=cluster)``, one array per resource group."""

    def run(jobs: Sequence[Job], workers: int) -> list[Outcome]:
        import submitit

        submitted = []
        for resources, group in resource_groups(jobs):
            executor = submitit.AutoExecutor(folder=submitit_folder(jobs), cluster=cluster)
            executor.update_parameters(**submitit_parameters(resources, cluster))
            with executor.batch():
                handles = [executor.submit(run_job, job) for job in group]
            if cluster != "debug":
                log.info("submitted %d job(s) as %s", len(group), ", ".join(str(h.job_id) for h in handles[:3]))
            submitted += zip(group, handles, strict=True)
        outcomes = []
        for job, handle in submitted:
            exception = handle.exception()
            error = None if exception is None else _error_of(job, str(exception).strip().splitlines()[0])
            logs = None if cluster == "debug" else str(handle.paths.stdout)
            outcomes.append(Outcome(job, error, logs))
        return outcomes

    return run


BACKENDS: dict[str, Backend] = {
    "local": run_local,
    **{name: submitit_backend(cluster) for name, cluster in SUBMITIT_CLUSTERS.items()},
}


def execute(jobs: Sequence[Job], executor: str, workers: int | None = None, retries: int = 1) -> list[Outcome]:
    """Run ``jobs`` on ``executor``; retry failed ones up to ``retries`` times; one outcome per job, in order."""
    if executor not in BACKENDS:
        raise PvqError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if retries < 0:
        raise PvqError(f"--retries must be ≥ 0, got {retries}")
    if executor == "slurm":
        check_slurm_available()
    workers = workers or default_workers(jobs)
    outcomes: dict[str, Outcome] = {}
    pending = list(jobs)
    for attempt in range(1, retries + 2):
        if not pending:
            break
        if attempt > 1:
            log.warning("retrying %d failed job(s): %s", len(pending), ", ".join(job.job_id for job in pending))
        for outcome in BACKENDS[executor](pending, workers):
            outcomes[outcome.job.job_id] = Outcome(outcome.job, outcome.error, outcome.log, attempt)
        pending = [job for job in pending if not outcomes[job.job_id].ok]
    return [outcomes[job.job_id] for job in jobs]
