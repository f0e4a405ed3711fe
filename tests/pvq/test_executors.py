"""`pvq run`: grids of tiny models run end to end through submitit and the local process pool, reruns skip
finished jobs, a job killed midway leaves no result and runs again, failures are retried and reported, and SLURM
is checked. (The 4-job grid uses submitit's debug executor, in this process, to stay fast; the local pool runs
jobs as subprocesses in the kill test. ``--executor submitit-local`` runs the same submitit code with one
process per job.)"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from tiny_models import save_tiny_model

from figures.experiments import EXPERIMENTS, Experiment, ExperimentContext, run_one
from measure.data.text import evaluation_text
from measure.evaluation.perplexity import bos_token_id_for, evaluate_perplexity, make_windows
from measure.models.load import load_model
from pvq.cli import main
from pvq.scale.executors import check_slurm_available, execute, gpu_slots
from pvq.scale.grid_file import load_grid
from pvq.scale.jobs import JOB_KINDS, Job, Resources, is_finished, last_failure, model_loader
from theory.errors import PvqError

WINDOW = 32


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {family: save_tiny_model(family, root / family) for family in ("llama", "qwen2")}


def write_grid(folder: Path, models: list[Path], grids: list[str], header: str = "") -> Path:
    blocks = "".join(
        f'\n[[grid]]\nmodels = {json.dumps([str(m) for m in models])}\nevaluations = ["ppl"]\n{extra}\n'
        for extra in grids
    )
    path = folder / "grid.toml"
    settings = f'results = "{folder / "results"}"\ndevice = "cpu"\n{header}\n[eval]\nwindow = {WINDOW}\n'
    path.write_text(settings + blocks)
    return path


def test_submitit_runs_four_jobs_and_a_rerun_skips_them(
    tiny_dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    options = ["[grid.eval]\nmax_windows = 1", "[grid.eval]\nmax_windows = 2"]
    grid = write_grid(tmp_path, list(tiny_dirs.values()), options)
    assert main(["run", str(grid), "--executor", "debug"]) == 0
    jobs = load_grid(grid)
    assert len(jobs) == 4 and all(is_finished(job) for job in jobs)
    markers = {job.marker_path: job.marker_path.stat().st_mtime_ns for job in jobs}
    table = pd.read_parquet(tmp_path / "results" / "eval" / "eval.parquet")
    ppl = table[table.metric == "perplexity"]
    assert len(ppl) == 4 and ppl.cache_key.nunique() == 4
    # independent check: the in-process perplexity of one job's model and protocol
    loaded = load_model(str(tiny_dirs["llama"]))
    bos = bos_token_id_for(loaded.tokenizer, loaded.bos_per_window)
    windows = make_windows(evaluation_text(), loaded.tokenizer, WINDOW, None, bos, 2)
    expected = evaluate_perplexity(loaded.model, windows).perplexity
    row = ppl[(ppl.model_id == str(tiny_dirs["llama"])) & (ppl.limit == 2)]
    assert row.value.item() == pytest.approx(expected, rel=1e-6)
    capsys.readouterr()
    assert main(["run", str(grid), "--executor", "debug"]) == 0
    assert "4 jobs, 4 finished (skipped), 0 to run" in capsys.readouterr().out
    assert {path: path.stat().st_mtime_ns for path in markers} == markers


KILL_AT_COMMIT = textwrap.dedent("""
    import os, sys
    from pvq.scale.jobs import main
    results, job_file = sys.argv[1], sys.argv[2]
    replace = os.replace
    def killed_while_committing(source, target):
        if str(target).startswith(results):
            os._exit(9)
        replace(source, target)
    os.replace = killed_while_committing
    main([job_file])
""")


def test_a_job_killed_midway_leaves_no_result_and_runs_again(
    tiny_dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    grid = write_grid(tmp_path, [tiny_dirs["llama"]], ["[grid.eval]\nmax_windows = 1"])
    (job,) = load_grid(grid)
    job_file = tmp_path / "job.json"
    job_file.write_text(job.to_json())
    results = tmp_path / "results"
    killed = subprocess.run([sys.executable, "-c", KILL_AT_COMMIT, str(results), str(job_file)], check=False)
    assert killed.returncode == 9
    visible = [p for p in results.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert visible == [] and not is_finished(job)
    assert main(["run", str(grid), "--executor", "local", "--workers", "1"]) == 0
    assert "1 jobs, 0 finished (skipped), 1 to run" in capsys.readouterr().out
    assert is_finished(job) and len(list((results / "eval" / "cache").glob("*.json"))) == 1
    assert job.log_path.read_text().count(f"job {job.job_id} finished") == 1


def test_failures_are_retried_once_then_reported(
    tiny_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    grid = write_grid(tmp_path, [tiny_dirs["llama"]], [""])
    (job,) = load_grid(grid)
    calls: list[int] = []

    def flaky(job: object, device: str) -> list[str]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("transient failure")
        return []

    monkeypatch.setitem(JOB_KINDS, "eval", flaky)
    (outcome,) = execute([job], "debug", retries=1)
    assert outcome.ok and outcome.attempts == 2 and is_finished(job) and last_failure(job) is None

    job.marker_path.unlink()
    monkeypatch.setitem(JOB_KINDS, "eval", lambda job, device: 1 / 0)
    assert main(["run", str(grid), "--executor", "debug"]) == 1
    report = capsys.readouterr().out
    assert "failed after 2 attempt(s): ZeroDivisionError" in report
    assert not is_finished(job) and last_failure(job).startswith("ZeroDivisionError")


def test_experiment_jobs_write_the_figure_cache(
    tiny_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def count_parameters(config: dict, context: ExperimentContext) -> pd.DataFrame:
        model = context.model.model
        return pd.DataFrame({"parameters": [sum(p.numel() for p in model.parameters())], "seed": [context.seed]})

    toy = Experiment("toy_parameter_count", count_parameters, {"unit": "weights"}, lambda rng: pd.DataFrame(),
                     needs_model=True)
    monkeypatch.setitem(EXPERIMENTS, toy.name, toy)
    grid = tmp_path / "grid.toml"
    grid.write_text(f'results = "{tmp_path / "results"}"\ndevice = "cpu"\n[[grid]]\n'
                    f'models = ["{tiny_dirs["qwen2"]}"]\nevaluations = ["{toy.name}"]\nseeds = [3]\n')
    assert main(["run", str(grid), "--executor", "debug"]) == 0
    context = ExperimentContext(model_name=str(tiny_dirs["qwen2"]), results_root=tmp_path / "results", seed=3)
    again = run_one(toy, context)
    assert again.status == "cached"
    expected = sum(p.numel() for p in context.model.model.parameters())
    assert again.table().parameters.item() == expected


def test_half_precision_loads_are_keyed_apart(tiny_dirs: dict[str, Path]) -> None:
    full = model_loader("float32")(str(tiny_dirs["llama"]), "cpu")
    half = model_loader("bfloat16")(str(tiny_dirs["llama"]), "cpu")
    assert half.model.dtype == torch.bfloat16 and half.model_hash == f"{full.model_hash}+bfloat16"


def test_slurm_needs_sbatch_and_dry_run_prints_the_array(
    tiny_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(PvqError, match="--executor slurm needs SLURM, but sbatch and srun is not on PATH"):
        check_slurm_available()
    resources = '[resources]\ngpus = 1\ncpus = 8\nmem = "64GB"\ntime = "04:00:00"\npartition = "gpu"\n'
    grid = write_grid(tmp_path, list(tiny_dirs.values()), ["", "[grid.eval]\nmax_windows = 3"], resources)
    assert main(["run", str(grid), "--executor", "slurm"]) == 2
    assert "sbatch and srun is not on PATH" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()
    assert main(["run", str(grid), "--executor", "slurm", "--dry-run"]) == 0
    script = capsys.readouterr().out
    for line in ("#SBATCH --array=0-3%4", "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --mem=64GB", "#SBATCH --time=240", "#SBATCH --partition=gpu", "submitit.core._submit"):
        assert line in script


def test_a_bad_file_fails_before_any_job(tiny_dirs: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    grid = write_grid(tmp_path, [tiny_dirs["llama"], Path("no/such/model/dir/")], [""])
    assert main(["run", str(grid)]) == 2
    error = capsys.readouterr().err
    assert "grid.toml:" in error and "unknown model" in error
    assert not (tmp_path / "results").exists()


def test_local_pool_slots_split_the_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    wanting = [Job("eval", "ppl", "m", resources=Resources(gpus=gpus)) for gpus in (1, 2, 4)]
    assert gpu_slots(wanting[:1]) == [("0",), ("1",), ("2",)]
    assert gpu_slots(wanting[:2]) == [("0", "1")]
    assert gpu_slots(wanting) is None
    assert gpu_slots([Job("eval", "ppl", "m")]) is None
