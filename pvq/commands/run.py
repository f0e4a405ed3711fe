"""`pvq run`: Run a declared experiment grid locally or on SLURM.

``pvq run FILE [--executor local|slurm|submitit-local|debug] [--dry-run] [--workers N] [--retries N]
[--device D] [--dtype T]``. The experiment file (TOML, :mod:`pvq.scale.grid_file`) is checked completely before
any job starts; ``--device`` / ``--dtype`` override its settings for every job (a dtype is part of a job's
identity, so another dtype means other jobs and results; a device is not). Finished jobs are skipped, the
others run on the executor (:mod:`pvq.scale.executors`), failed ones are retried and then reported. Results land
in the tables ``pvq figures`` and ``pvq eval`` read.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from measure.capture.placement import check_device_name, resolve_device
from measure.evaluation.results import ResultCache
from pvq.commands.common import add_device_arguments
from pvq.scale.executors import EXECUTORS, check_slurm_available, execute, sbatch_scripts
from pvq.scale.grid_file import load_grid
from pvq.scale.jobs import EVAL_DIR, EVAL_KIND, is_finished, last_failure
from theory.errors import PvqError

HELP = "Run a declared experiment grid locally or on SLURM."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`pvq run FILE [--executor ...] [--dry-run] [--workers N] [--retries N] [--device D] [--dtype T]`."""
    parser.add_argument("file", type=Path, help="experiment file (TOML); examples in pvq/scale/experiment_files/")
    parser.add_argument(
        "--executor", default="local", choices=EXECUTORS,
        help="local = process pool on this machine (default); slurm = submitit job arrays; submitit-local = "
             "submitit's local executor; debug = one after the other in this process",
    )
    parser.add_argument("--dry-run", action="store_true",
                        help="list the jobs (and for slurm print the sbatch scripts) without running anything")
    parser.add_argument("--workers", type=int,
                        help="jobs side by side for --executor local (default: cores ÷ cpus per job)")
    parser.add_argument("--retries", type=int, default=1, help="times a failed job is retried (default 1)")
    add_device_arguments(parser, overrides="the experiment file")


def job_table(jobs: list[Any], status: dict[str, str]) -> str:
    """One line per job: id, status, label."""
    return "\n".join(f"  {job.job_id}  {status[job.job_id]:<9} {job.label()}" for job in jobs)


def refresh_eval_tables(jobs: list[Any]) -> list[Path]:
    """Rewrite ``<results>/eval/eval.parquet`` from the evaluation cache (once, after all jobs)."""

    roots = sorted({Path(job.results) / EVAL_DIR for job in jobs if job.kind == EVAL_KIND})
    return [ResultCache(root).write_table() for root in roots if (root / "cache").is_dir()]


def check_device_here(device: str | None, executor: str) -> None:
    """Check ``--device``: its name always; on this machine also that it exists (a PvqError before any job
    starts), except for SLURM, whose jobs run on other nodes."""
    if device is None:
        return
    check_device_name(device)
    if executor != "slurm":
        resolve_device(device)


def with_overrides(jobs: list[Any], device: str | None, dtype: str | None) -> list[Any]:
    """``jobs`` with ``--device`` / ``--dtype`` replacing what the experiment file says, when given (jobs that
    become the same job are run once)."""
    changes = {key: value for key, value in (("device", device), ("dtype", dtype)) if value is not None}
    replaced = [dataclasses.replace(job, **changes) for job in jobs]
    return list({job.job_id: job for job in replaced}.values())


def run(args: argparse.Namespace) -> int:
    check_device_here(args.device, args.executor)
    if args.executor == "slurm" and not args.dry_run:
        check_slurm_available()
    if args.workers is not None and args.workers < 1:
        raise PvqError(f"--workers must be at least 1, got {args.workers}")
    jobs = with_overrides(load_grid(args.file), args.device, args.dtype)
    status = {job.job_id: "finished" if is_finished(job) else "pending" for job in jobs}
    pending = [job for job in jobs if status[job.job_id] == "pending"]
    print(f"{args.file}: {len(jobs)} jobs, {len(jobs) - len(pending)} finished (skipped), {len(pending)} to run")
    for job in pending:
        if (error := last_failure(job)) is not None:
            print(f"  {job.job_id} failed last time ({error}); running it again")
    if args.dry_run:
        print(job_table(jobs, status))
        if args.executor == "slurm" and pending:
            for script in sbatch_scripts(pending):
                print(f"\n# sbatch script ({args.executor}, dry run)\n{script}")
        return 0
    outcomes = execute(pending, args.executor, args.workers, args.retries) if pending else []
    for table in refresh_eval_tables(jobs):
        print(f"table: {table}")
    failed = [outcome for outcome in outcomes if not outcome.ok]
    for outcome in outcomes:
        status[outcome.job.job_id] = "ran" if outcome.ok else "FAILED"
    print(job_table(jobs, status))
    for outcome in failed:
        print(f"  {outcome.job.job_id} failed after {outcome.attempts} attempt(s): {outcome.error}\n"
              f"    log: {outcome.log or 'printed above'}")
    if failed:
        print(f"{len(failed)} job(s) failed; fix the cause and rerun `pvq run {args.file}` "
              "(finished jobs are skipped)")
        return 1
    return 0
