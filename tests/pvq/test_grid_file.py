"""Experiment files: expansion is the declared product, stable and de-duplicated; bad input names its line."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from pvq.scale.grid_file import TomlLines, load_grid, memory_gb, minutes, parse_grid
from pvq.scale.jobs import EVAL_KIND, EXPERIMENT_KIND, Job, Resources
from theory.errors import PvqError

EXAMPLES = Path(__file__).resolve().parents[2] / "pvq" / "scale" / "experiment_files"
MODELS = ["smollm2-135m", "org/model-a"]
SPECS = ["none", "magnitude:0.5", "gptq:4:g128"]
GRID = """\
results = "out"
device = "cpu"

[resources]
gpus = 1
mem = "64GB"
time = "1-02:03:04"

[eval]
max_windows = 4

[[grid]]
models = ["smollm2-135m", "org/model-a"]
specs = ["none", "magnitude:0.5", "gptq:4:g128"]
evaluations = ["ppl", "csqa", "theory_formats_gaussian"]
seeds = [0, 1]
"""


def test_expansion_is_the_declared_product() -> None:
    jobs = parse_grid(GRID)
    evals = {(j.model, j.spec, j.evaluation, j.seed) for j in jobs if j.kind == EVAL_KIND}
    experiments = {(j.model, j.spec, j.evaluation, j.seed) for j in jobs if j.kind == EXPERIMENT_KIND}
    assert evals == set(itertools.product(MODELS, SPECS, ["ppl", "csqa"], [None]))
    # a model-free experiment runs once per seed, with no model and its own (declared) specs
    assert experiments == {(None, "none", "theory_formats_gaussian", seed) for seed in (0, 1)}
    assert len(jobs) == 2 * 3 * 2 + 2
    assert len({job.job_id for job in jobs}) == len(jobs)
    eval_job = next(j for j in jobs if j.kind == EVAL_KIND)
    assert eval_job.options == (("max_windows", 4),)
    assert eval_job.device == "cpu" and eval_job.results == "out"
    assert eval_job.resources == Resources(gpus=1, mem_gb=64.0, timeout_min=24 * 60 + 2 * 60 + 3 + 1)


def test_expansion_is_stable_under_reordering_and_duplicates() -> None:
    jobs = parse_grid(GRID)
    reordered = GRID.replace('["smollm2-135m", "org/model-a"]', '["org/model-a", "smollm2-135m"]').replace(
        '["none", "magnitude:0.5", "gptq:4:g128"]', '["gptq:4:g128", "none", "magnitude:0.5"]'
    )
    duplicated = GRID + '\n[[grid]]\nmodels = ["smollm2-135m"]\nevaluations = ["ppl"]\n'
    for text in (GRID, reordered, duplicated):
        again = parse_grid(text)
        assert [job.job_id for job in again] == [job.job_id for job in jobs]
    assert jobs == sorted(jobs, key=Job.sort_key)


def test_job_id_ignores_where_a_job_runs_but_not_what_it_computes() -> None:
    base = parse_grid(GRID)[0]
    moved = parse_grid(GRID.replace('device = "cpu"', 'device = "cuda"').replace('gpus = 1', 'gpus = 2'))[0]
    half = parse_grid(GRID.replace('device = "cpu"', 'dtype = "float16"'))[0]
    assert moved.job_id == base.job_id
    assert half.job_id != base.job_id


@pytest.mark.parametrize(
    ("edit", "line", "words"),
    [
        (('seeds = [0, 1]', 'seeds = [0, 1]\nsepcs = ["none"]'), 17, "unknown key 'sepcs'"),
        (('[eval]', '[eval]\nwindows = 3'), 10, "unknown key 'windows'"),
        (('"org/model-a"]', '"no-such-model"]'), 13, "unknown model 'no-such-model'"),
        (('"magnitude:0.5",', '"magnitude:0.5",\n   "frobnicate:3",'), 15, "unknown method 'frobnicate'"),
        (('"csqa",', '"csqa", "hellaswog",'), 15, "unknown evaluation 'hellaswog'"),
        (('mem = "64GB"', 'mem = "lots"'), 6, "resources.mem"),
        (('time = "1-02:03:04"', 'time = "soon"'), 7, "resources.time"),
        (('device = "cpu"', 'device = "tpu"'), 2, "unknown device 'tpu'"),
        (('seeds = [0, 1]', 'seeds = [-1]'), 16, "seeds"),
        (('results = "out"', 'results = "out"\n[surprise]\nx = 1'), 2, "unknown key 'surprise'"),
    ],
)
def test_bad_input_names_the_line(edit: tuple[str, str], line: int, words: str) -> None:
    with pytest.raises(PvqError, match=rf"^grid\.toml:{line}: .*{words}"):
        parse_grid(GRID.replace(*edit), "grid.toml")


def test_structural_errors() -> None:
    with pytest.raises(PvqError, match=r"not valid TOML.*line 2"):
        parse_grid('results = "x"\nmodels = [1,, 2]\n', "bad.toml")
    with pytest.raises(PvqError, match="declares no \\[\\[grid\\]\\]"):
        parse_grid('results = "x"\n')
    with pytest.raises(PvqError, match="has no 'evaluations' list"):
        parse_grid('[[grid]]\nmodels = ["smollm2-135m"]\n')
    with pytest.raises(PvqError, match="'ppl' is listed twice"):
        parse_grid('[[grid]]\nmodels = ["smollm2-135m"]\nevaluations = ["ppl", "ppl"]\n')
    with pytest.raises(PvqError, match="does not exist"):
        load_grid("/nonexistent/grid.toml")


def test_local_model_folders_are_accepted(tmp_path: Path) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    jobs = parse_grid(f'[[grid]]\nmodels = ["{folder}"]\nevaluations = ["ppl"]\n')
    assert [job.model for job in jobs] == [str(folder)]


def test_line_locator_finds_nested_tables_and_array_entries() -> None:
    text = '[[grid]]\nmodels = ["a"]\n[grid.resources]\ngpus = 1\n\n[[grid]]\nmodels = [\n  "b",\n  "c",\n]\n'
    lines = TomlLines(text)
    assert lines.line_of(("grid", 0, "resources", "gpus")) == 4
    assert lines.line_of(("grid", 1, "models")) == 7
    assert lines.line_of(("grid", 1, "models"), "c") == 9


def test_resource_units() -> None:
    assert memory_gb("500MB") == pytest.approx(500 / 1024)
    assert memory_gb("16G") == 16.0 and memory_gb(8) == 8.0 and memory_gb("0GB") is None
    assert minutes("00:30:00") == 30 and minutes("00:00:01") == 1 and minutes(90) == 90 and minutes("1h") is None


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.toml")))
def test_example_files_are_valid(name: str) -> None:
    jobs = load_grid(EXAMPLES / name)
    assert jobs and len({job.job_id for job in jobs}) == len(jobs)
