"""The experiment cache: reused when nothing changed, invalidated by config, model, seed, code or a data file it
read; resumable."""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from figure_toys import ToyModels, make_counting_experiment, toy_context

from figures.experiments import EXPERIMENTS, Experiment, cache_key, code_version, ensure, experiment, stored_key
from measure.data import text
from measure.data.text import named_text
from measure.records.store import read_provenance, read_table
from pvq.scale.jobs import EXPERIMENT_KIND, Job, is_finished, run_job
from theory.errors import PvqError


def temp_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.name.endswith(".tmp")]


def test_second_run_reuses_the_table_and_returns_the_same_values(tmp_path):
    calls: list[str] = []
    models = ToyModels()
    exp = make_counting_experiment("toy", calls)
    first = ensure([exp], toy_context(tmp_path, models))["toy"]
    second = ensure([exp], toy_context(tmp_path, models))["toy"]
    assert (first.status, second.status) == ("computed", "cached")
    assert calls == ["toy"]
    np.testing.assert_array_equal(second.table()["y"], 2.0 * np.arange(5.0))
    assert first.path == tmp_path / "toy" / "toy.parquet"


def test_config_change_invalidates(tmp_path):
    calls: list[str] = []
    models = ToyModels()
    ensure([make_counting_experiment("toy", calls)], toy_context(tmp_path, models))
    changed = make_counting_experiment("toy", calls, config={"scale": 3.0})
    run = ensure([changed], toy_context(tmp_path, models))["toy"]
    assert run.status == "computed" and calls == ["toy", "toy"]
    np.testing.assert_array_equal(read_table(run.path)["y"], 3.0 * np.arange(5.0))


def test_model_hash_change_invalidates_and_is_recorded(tmp_path):
    calls: list[str] = []
    models = ToyModels()
    exp = make_counting_experiment("toy", calls)
    ensure([exp], toy_context(tmp_path, models))
    models.hashes["toy"] = "hash-b"
    run = ensure([exp], toy_context(tmp_path, models))["toy"]
    assert run.status == "computed" and calls == ["toy", "toy"]
    assert read_provenance(run.path)["model_hash"] == "hash-b"


def test_seed_change_invalidates(tmp_path):
    calls: list[str] = []
    models = ToyModels()
    exp = make_counting_experiment("toy", calls)
    ensure([exp], toy_context(tmp_path, models, seed=0))
    run = ensure([exp], toy_context(tmp_path, models, seed=1))["toy"]
    assert run.status == "computed"
    np.testing.assert_array_equal(run.table()["y"], 2.0 * np.arange(5.0) + 1)


def test_code_version_follows_the_function_source(tmp_path):
    exp = make_counting_experiment("toy", [])
    other_function = dataclasses.replace(exp, compute=lambda config, context: pd.DataFrame())
    assert code_version(exp) != code_version(other_function)
    context = toy_context(tmp_path, ToyModels())
    assert cache_key(exp, context) != cache_key(other_function, context)


COMPUTE_SOURCE = """
import pandas as pd
{decorator}
def compute(config, context):{comment}
    return pd.DataFrame({{"y": [{value}]}})
"""


def code_version_of(tmp_path: Path, module: str, decorator: str = "", comment: str = "", value: int = 1) -> str:
    source = COMPUTE_SOURCE.format(decorator=decorator, comment=comment, value=value)
    (tmp_path / f"{module}.py").write_text(source)
    compute = importlib.import_module(module).compute
    return code_version(dataclasses.replace(make_counting_experiment("toy", []), compute=compute))


def test_code_version_ignores_decorators_and_comments_but_not_the_body(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    plain = code_version_of(tmp_path, "toy_compute_plain")
    assert code_version_of(tmp_path, "toy_compute_decorated", decorator="@staticmethod") == plain
    assert code_version_of(tmp_path, "toy_compute_commented", comment="  # explained") == plain
    assert code_version_of(tmp_path, "toy_compute_changed", value=2) != plain


def test_model_free_experiment_never_loads_the_model(tmp_path):
    models = ToyModels()
    exp = make_counting_experiment("free", [], needs_model=False)
    run = ensure([exp], toy_context(tmp_path, models))["free"]
    assert models.loads == 0
    assert run.path == tmp_path / "model-free" / "free.parquet"
    assert read_provenance(run.path)["model_id"] is None


def test_ctrl_c_keeps_finished_results_leaves_no_temp_file_and_resumes(tmp_path):
    calls: list[str] = []
    models = ToyModels()
    first, second = make_counting_experiment("first", calls), make_counting_experiment("second", calls)

    def interrupted(config, context):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ensure([first, dataclasses.replace(second, compute=interrupted)], toy_context(tmp_path, models))
    assert (tmp_path / "toy" / "first.parquet").exists()
    assert not (tmp_path / "toy" / "second.parquet").exists()
    assert temp_files(tmp_path) == []
    runs = ensure([first, second], toy_context(tmp_path, models))
    assert {name: run.status for name, run in runs.items()} == {"first": "cached", "second": "computed"}
    assert calls == ["first", "second"]


def test_interrupt_while_rewriting_a_stale_table_never_pairs_new_key_with_old_data(tmp_path, monkeypatch):
    models = ToyModels()
    path = ensure([make_counting_experiment("toy", [])], toy_context(tmp_path, models))["toy"].path
    changed = make_counting_experiment("toy", [], config={"scale": 3.0})

    def half_write(self, target, **kwargs):
        Path(target).write_bytes(b"PAR1 half")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(pd.DataFrame, "to_parquet", half_write)
        with pytest.raises(KeyboardInterrupt):
            ensure([changed], toy_context(tmp_path, models))
    assert stored_key(path) is None and not path.exists()
    assert temp_files(tmp_path) == []
    run = ensure([changed], toy_context(tmp_path, models))["toy"]
    assert run.status == "computed"
    np.testing.assert_array_equal(run.table()["y"], 3.0 * np.arange(5.0))


def test_non_json_config_and_wrong_return_type_raise_clear_errors(tmp_path):
    with pytest.raises(PvqError, match="plain JSON"):
        experiment("bad", config={"x": object()}, synthetic=lambda rng: pd.DataFrame())
    exp = dataclasses.replace(make_counting_experiment("toy", []), compute=lambda config, context: [1, 2])
    with pytest.raises(PvqError, match="must return a DataFrame"):
        ensure([exp], toy_context(tmp_path, ToyModels()))


ARTICLES = [{"title": f"Article {i}", "text": f"Article {i}\n\nA sentence of article {i}."} for i in range(8)]
"""Cleaned articles as :func:`measure.data.text.wiki_articles` stores them (0-2 and 4-6 are calibration text)."""


def count_calibration_characters(config: dict, context: object) -> pd.DataFrame:
    return pd.DataFrame({"characters": [len(named_text("wikipedia-calibration"))]})


@pytest.fixture
def articles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The cleaned-articles file of a private pvq cache, holding :data:`ARTICLES`."""
    monkeypatch.setenv("PVQ_CACHE", str(tmp_path / "pvq-cache"))
    path = text.articles_path()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(ARTICLES))
    text.wiki_articles.cache_clear()
    yield path
    text.wiki_articles.cache_clear()


def edit_first_article(path: Path) -> None:
    path.write_text(json.dumps([{**ARTICLES[0], "text": ARTICLES[0]["text"] + " Edited."}, *ARTICLES[1:]]))
    text.wiki_articles.cache_clear()


READS_TEXT = Experiment("reads_text", count_calibration_characters, {}, lambda rng: pd.DataFrame())
"""A model-free experiment that reads the calibration text."""


def test_an_edit_of_a_data_file_the_experiment_read_recomputes_it(tmp_path, articles):
    context = toy_context(tmp_path / "results", ToyModels())
    first = ensure([READS_TEXT], context)["reads_text"]
    assert first.status == "computed" and first.provenance["data_read"] == ["text:wikipedia-calibration"]
    characters = first.table()["characters"].item()
    assert ensure([READS_TEXT], context)["reads_text"].status == "cached"
    edit_first_article(articles)
    again = ensure([READS_TEXT], context)["reads_text"]
    assert again.status == "computed"
    assert again.table()["characters"].item() == characters + len(" Edited.")


def test_a_finished_pvq_run_experiment_job_is_stale_after_an_edit_of_a_data_file_it_read(
    tmp_path, articles, monkeypatch
):
    monkeypatch.setitem(EXPERIMENTS, READS_TEXT.name, READS_TEXT)
    job = Job(kind=EXPERIMENT_KIND, evaluation=READS_TEXT.name, model=None, seed=0, device="cpu",
              results=str(tmp_path / "results"))  # fmt: skip
    assert not is_finished(job)
    run_job(job)
    assert is_finished(job)
    edit_first_article(articles)
    assert not is_finished(job)


def test_an_experiment_that_reads_no_data_file_is_keyed_without_data(tmp_path):
    run = ensure([make_counting_experiment("toy", [])], toy_context(tmp_path, ToyModels()))["toy"]
    assert run.provenance["data_read"] == [] and run.provenance["cache_key_fields"]["data"] == {}
    assert set(run.provenance["cache_key_fields"]["environment"]) >= {"torch", "transformers", "lm_eval", "device"}
