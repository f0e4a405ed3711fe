"""The progress `pvq figures` shows: start lines with estimates from the last recorded run time, steps on the
bar's line on a terminal and one line per step elsewhere."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from figure_toys import ToyModels, toy_context, toy_synthetic

from figures.experiments import Experiment, ensure
from figures.progress import NO_ESTIMATE, ExperimentProgress, duration_text, last_runtime, start_line
from measure.records.store import write_table


class FakeTerminal(io.StringIO):
    """A stream that says it is a terminal, so tqdm draws its bar."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("seconds", "text"), [
    (3.0, "a few seconds"), (42.0, "about 40 s"), (61.0, "about 1 min"), (6 * 60 + 10, "about 6 min"),
    (5400.0, "about 1.5 h"),
])  # fmt: skip
def test_durations_read_as_a_person_says_them(seconds, text):
    assert duration_text(seconds) == text


def test_start_line_gives_position_name_and_estimate():
    assert start_line(5, 9, "removal_study", 361.0) == "[5/9] removal_study — about 6 min"
    assert start_line(1, 2, "toy", None) == f"[1/2] toy — {NO_ESTIMATE}"


def test_last_runtime_is_read_from_the_sidecar_even_without_the_table(tmp_path):
    table = tmp_path / "model-free" / "toy.parquet"
    assert last_runtime(table) is None
    write_table(pd.DataFrame({"x": [1.0]}), table, {"runtime_s": 12.5})
    table.unlink()
    assert last_runtime(table) == 12.5
    table.with_suffix(".json").write_text("{not json")
    assert last_runtime(table) is None
    table.with_suffix(".json").write_text(json.dumps({"cache_key": "k"}))
    assert last_runtime(table) is None


def test_without_a_terminal_every_start_and_step_is_one_plain_line():
    stream = io.StringIO()
    with ExperimentProgress(2, stream) as progress:
        progress.start(1, "first", None)
        progress.step("capture done")
        progress.step("ledger done")
        progress.advance()
        progress.start(2, "second", 30.0)
        progress.advance()
    assert "\r" not in stream.getvalue()
    assert stream.getvalue().splitlines() == [
        f"[1/2] first — {NO_ESTIMATE}", "  first: capture done", "  first: ledger done",
        "[2/2] second — about 30 s",
    ]


def test_on_a_terminal_steps_stay_on_the_bar_line():
    stream = FakeTerminal()
    with ExperimentProgress(1, stream) as progress:
        progress.start(1, "first", None)
        progress.step("capture done")
        progress.step("ledger done")
        progress.advance()
    output = stream.getvalue()
    shown = [line.split("\r")[-1] for line in output.split("\n")]  # what stays on screen: a line's last redraw
    assert shown[0].startswith("[1/1] first")
    assert "1/1" in shown[1] and shown[1].endswith("first: ledger done]")  # the finished bar, last step on it
    assert shown[2:] == [""]
    redraws = output.split("\r")
    assert any(part.endswith("first: capture done]") for part in redraws)


def test_an_experiments_steps_reach_the_progress_and_go_back_to_the_default_after_it(tmp_path):
    def stepping(config, context):
        context.step("halfway")
        return pd.DataFrame({"x": [1.0]})

    context = toy_context(tmp_path, ToyModels())
    default = context.on_step
    stream = io.StringIO()
    ensure([Experiment("stepping", stepping, {}, toy_synthetic)], context, stream=stream)
    assert stream.getvalue().splitlines() == [f"[1/1] stepping — {NO_ESTIMATE}", "  stepping: halfway"]
    assert context.on_step is default
