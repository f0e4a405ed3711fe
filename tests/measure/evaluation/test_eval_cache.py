"""The evaluation cache key (``pvq eval``, ``pvq run``): a row is reused when nothing changed and recomputed after
an edit of the compression code it ran, of a task file it read, or of the calibration protocol; an edit of code it
did not run (a figure caption) reuses it. Code edits are made on a copy of the checkout, which the import-closure
code version reads instead of the checkout."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from measure.compress.spec import parse_spec
from measure.data import text
from measure.data.benchmarks import BENCHMARKS_SOURCE
from measure.data.calibration import CalibrationProtocol
from measure.evaluation import lmeval, runs
from measure.evaluation.request import EvaluationRequest, compress_in_memory, run_evaluation
from measure.records import cache_key, code_version
from measure.records.code_version import module_closure
from pvq.scale.jobs import EVAL_KIND, Job, fingerprint

ROOT = Path(__file__).resolve().parents[3]
TEXT = "Pruning removes weights; quantization rounds them. Both trade accuracy for size. " * 40
RTN_MODULE = "measure/compress/methods/uniform.py"
CAPTION_MODULE = "figures/catalog/frontier.py"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A private pvq cache and a short text for calibration and evaluation."""
    monkeypatch.setenv("PVQ_CACHE", str(tmp_path / "pvq-cache"))
    monkeypatch.setattr(text, "calibration_text", lambda: TEXT)
    monkeypatch.setattr(text, "evaluation_text", lambda: TEXT)


@pytest.fixture
def checkout_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the project packages; the code version reads every project module from it."""
    copy = tmp_path / "checkout"
    for package in ("theory", "measure", "figures"):
        shutil.copytree(ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    original = code_version.module_path

    def in_copy(module: str) -> Path | None:
        path = original(module)
        return path if path is None or ROOT not in path.parents else copy / path.relative_to(ROOT)

    monkeypatch.setattr(code_version, "module_path", in_copy)
    return copy


def rtn_request(model: Path, out: Path, **changes: object) -> EvaluationRequest:
    """``pvq eval --compress rtn:4:g16 --ppl --max-windows 1`` on a tiny model, calibrated on 2 short windows."""
    request = EvaluationRequest(
        model=str(model), out=out, spec="rtn:4:g16", ppl=True, window=64, max_windows=1,
        calibration=CalibrationProtocol(sequences=2, sequence_length=32),
    )  # fmt: skip
    return dataclasses.replace(request, **changes)


def cached(request: EvaluationRequest) -> bool:
    """Whether every row of the evaluation came from the cache (and the rows agree on it)."""
    flags = set(run_evaluation(request).summary["cached"])
    assert len(flags) == 1
    return flags.pop()


def append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + line)


def test_the_rtn_row_is_reused_when_nothing_changed(tiny_dir, tmp_path, offline) -> None:
    request = rtn_request(tiny_dir, tmp_path / "eval")
    first = run_evaluation(request)
    assert not first.summary["cached"].any()
    again = run_evaluation(request)
    assert again.summary["cached"].all()
    assert list(again.summary["value"]) == list(first.summary["value"])


def test_the_rtn_module_is_in_the_code_a_compressed_row_is_keyed_by() -> None:
    compress = compress_in_memory(None, parse_spec("rtn:4:g16"), "cpu", CalibrationProtocol())
    variant = runs.ModelVariant(None, "rtn:4:g16", compress, CalibrationProtocol())
    closure = module_closure(variant.code_modules())
    assert {runs.__name__, "measure.compress.methods.uniform", "measure.evaluation.lmeval"} <= set(closure)
    assert not any(module.startswith("figures") for module in closure)


def test_an_edit_of_the_rtn_module_recomputes_the_row(tiny_dir, tmp_path, offline, checkout_copy) -> None:
    request = rtn_request(tiny_dir, tmp_path / "eval")
    assert not cached(request)
    append(checkout_copy / RTN_MODULE, "\n# a fix of the quantizer\n")
    assert not cached(request)
    assert cached(request)


def test_an_edit_of_a_figure_caption_reuses_the_row(tiny_dir, tmp_path, offline, checkout_copy) -> None:
    request = rtn_request(tiny_dir, tmp_path / "eval")
    assert not cached(request)
    caption = checkout_copy / CAPTION_MODULE
    source = caption.read_text()
    assert "caption" in source
    caption.write_text(source.replace("caption", "caption ", 1) + "\n# a caption reworded\n")
    assert cached(request)


def test_a_change_of_the_calibration_protocol_recomputes_the_row(tiny_dir, tmp_path, offline) -> None:
    request = rtn_request(tiny_dir, tmp_path / "eval")
    assert not cached(request)
    for sequences, length, reused in ((2, 32, True), (3, 32, False), (2, 24, False)):
        protocol = CalibrationProtocol(sequences=sequences, sequence_length=length)
        assert cached(dataclasses.replace(request, calibration=protocol)) == reused


def test_a_change_of_the_calibration_text_recomputes_the_row(tiny_dir, tmp_path, offline, monkeypatch) -> None:
    request = rtn_request(tiny_dir, tmp_path / "eval")
    assert not cached(request)
    monkeypatch.setattr(text, "calibration_text", lambda: TEXT.upper())
    assert not cached(request)


def test_an_edit_of_a_task_yaml_recomputes_the_task_row(tiny_dir, tmp_path, offline, monkeypatch) -> None:
    tasks = tmp_path / "tasks"
    shutil.copytree(lmeval.TASKS_DIR, tasks)
    monkeypatch.setattr(lmeval, "TASKS_DIR", tasks)
    monkeypatch.setitem(cache_key.DATA_SOURCES, BENCHMARKS_SOURCE, lambda: "the benchmark files, unchanged")
    calls: list[str] = []

    def evaluate_task(model, tokenizer, request, **options) -> list[dict]:
        calls.append(request.name)
        return [{"subtask": "", "metric": "acc", "value": 0.5, "stderr": 0.1, "n": 4, "num_fewshot": 0}]

    monkeypatch.setattr(runs, "evaluate_task", evaluate_task)
    request = EvaluationRequest(model=str(tiny_dir), out=tmp_path / "eval", tasks=("csqa",), limit=4)
    assert not cached(request)
    assert cached(request) and calls == ["csqa"]
    append(tasks / "csqa.yaml", "\n# a reworded prompt\n")
    assert not cached(request) and calls == ["csqa", "csqa"]
    monkeypatch.setitem(cache_key.DATA_SOURCES, BENCHMARKS_SOURCE, lambda: "an edited benchmark file")
    assert not cached(request) and len(calls) == 3


def test_the_row_records_the_fields_of_its_key(tiny_dir, tmp_path, offline) -> None:
    request = rtn_request(tiny_dir, tmp_path / "eval")
    run_evaluation(request)
    (record,) = (tmp_path / "eval" / "cache").glob("*.json")
    fields = json.loads(record.read_text())["provenance"]["cache_key_fields"]
    assert fields["config"]["calibration"]["sequences"] == 2 and fields["config"]["spec"] == "rtn:4:g16"
    assert fields["weights"] and fields["code"]
    assert set(fields["data"]) == {"text:wikipedia-calibration"}
    assert {"torch", "transformers", "lm_eval", "device", "dtype"} <= set(fields["environment"])
    assert (fields["environment"]["device"], fields["environment"]["dtype"]) == ("cpu", "float32")
    assert record.stem == cache_key.CacheKey(**fields).digest


def test_a_finished_pvq_run_job_is_stale_after_an_rtn_edit_and_not_after_a_caption_edit(checkout_copy) -> None:
    job = Job(kind=EVAL_KIND, evaluation="ppl", model="tiny", spec="rtn:4:g16")
    before = fingerprint(job)
    caption = checkout_copy / CAPTION_MODULE
    append(caption, "\n# a caption reworded\n")
    assert fingerprint(job) == before
    append(checkout_copy / RTN_MODULE, "\n# a fix of the quantizer\n")
    assert fingerprint(job) != before


def test_a_finished_pvq_run_task_job_is_stale_after_a_task_yaml_edit(tmp_path, monkeypatch) -> None:
    tasks = tmp_path / "tasks"
    shutil.copytree(lmeval.TASKS_DIR, tasks)
    monkeypatch.setattr(lmeval, "TASKS_DIR", tasks)
    job = Job(kind=EVAL_KIND, evaluation="csqa", model="tiny")
    before = fingerprint(job)
    append(tasks / "csqa.yaml", "\n# a reworded prompt\n")
    assert fingerprint(job) != before


def test_an_edit_of_the_cleaner_names_a_new_cleaned_text_and_an_unrelated_edit_does_not(checkout_copy) -> None:
    before = text.articles_path()
    module = checkout_copy / "measure/data/text.py"
    source = module.read_text()
    assert '"""Held-out evaluation text:' in source and '.replace("&nbsp;", " ")' in source
    module.write_text(source.replace('"""Held-out evaluation text:', '"""The held-out evaluation text:'))
    assert text.articles_path() == before
    module.write_text(source.replace('.replace("&nbsp;", " ")', '.replace("&nbsp;", "\\u00a0")'))
    assert text.articles_path() != before
