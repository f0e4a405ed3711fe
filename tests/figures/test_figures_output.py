"""What a person sees from `pvq figures`: one start line per experiment that runs (none when all are
cached), with an estimate once a run time is recorded; third-party chatter only with --verbose, pvq's own
warnings always."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

from figures.progress import NO_ESTIMATE
from figures.registry import load_catalog
from pvq.cli import main

ARTIFACT = "kurtosis_bits_sqnr_difference"  # model-free, two cheap theory experiments
EXPERIMENTS = load_catalog()[ARTIFACT].needs
START_LINE = re.compile(r"^\[(\d+)/(\d+)\] (\S+) — (.+)$", re.MULTILINE)


def figures(tmp_path: Path, *extra: str) -> list[str]:
    folders = ["--results", str(tmp_path / "results"), "--out", str(tmp_path / "paper")]
    return ["figures", "--only", ARTIFACT, *folders, *extra]


def start_lines(output: str) -> list[tuple[int, int, str, str]]:
    return [(int(i), int(n), name, estimate) for i, n, name, estimate in START_LINE.findall(output)]


def test_each_experiment_that_runs_is_announced_once_and_cached_ones_are_not(tmp_path, capsys):
    assert main(figures(tmp_path)) == 0
    captured = capsys.readouterr()
    assert start_lines(captured.out + captured.err) == [
        (index, len(EXPERIMENTS), name, NO_ESTIMATE) for index, name in enumerate(EXPERIMENTS, start=1)
    ]
    assert main(figures(tmp_path)) == 0
    captured = capsys.readouterr()
    assert start_lines(captured.out + captured.err) == []
    assert f"0 computed, {len(EXPERIMENTS)} from cache" in captured.out
    (tmp_path / "results" / "model-free" / f"{EXPERIMENTS[-1]}.parquet").unlink()  # its sidecar stays
    assert main(figures(tmp_path)) == 0
    captured = capsys.readouterr()
    assert start_lines(captured.out + captured.err) == [
        (len(EXPERIMENTS), len(EXPERIMENTS), EXPERIMENTS[-1], "a few seconds")  # estimated from the recorded run
    ]


CHATTY_FIGURES = '''
import dataclasses
import logging
import sys
import warnings

import numpy as np

from figures.experiments import EXPERIMENTS
from figures.progress import NO_ESTIMATE
from figures.registry import load_catalog
from pvq.cli import main

THIRD_PARTY = """
import logging
import warnings

from tqdm import tqdm


def chatter(mode):
    logging.getLogger("lm_eval.models.huggingface").warning(
        "`pretrained` model kwarg is not of type `str`. Many other model arguments may be ignored.")
    for _ in tqdm(range(3), desc="Running loglikelihood requests"):
        pass
    warnings.warn(f"Solution may be inaccurate ({mode}).", UserWarning)
"""
PVQ = """
import logging
import warnings


def chatter(mode):
    logging.getLogger(__name__).warning(f"pvq: own log warning ({mode})")
    warnings.warn(f"pvq: own python warning ({mode})", UserWarning)
"""


def module_function(module_name, source):
    namespace = {"__name__": module_name}
    exec(compile(source, f"<{module_name}>", "exec"), namespace)
    return namespace["chatter"]


third_party, own = module_function("lm_eval.api.task", THIRD_PARTY), module_function("measure.toy_study", PVQ)
load_catalog()
experiment = EXPERIMENTS["theory_formats_gaussian"]
state = {"mode": None}


def chatty(config, context):
    from transformers.utils import logging as transformers_logging

    transformers_logger = transformers_logging.get_logger("transformers.modeling_utils")
    transformers_logger.warning(f"transformers chatter ({state['mode']})")
    third_party(state["mode"])
    own(state["mode"])
    return experiment.synthetic(np.random.default_rng(context.seed))


EXPERIMENTS[experiment.name] = dataclasses.replace(experiment, compute=chatty, code=())
root = sys.argv[1]
for mode, flags in (("quiet", []), ("verbose", ["--verbose"])):
    state["mode"] = mode
    print(f"=== {mode} ===", file=sys.stderr, flush=True)
    argv = ["figures", "--only", "sqnr_int_vs_pruning_gaussian", "--results", f"{root}/{mode}/results", "--out",
            f"{root}/{mode}/paper", *flags]
    assert main(argv) == 0
'''

THIRD_PARTY_CHATTER = (
    "`pretrained` model kwarg is not of type `str`", "Running loglikelihood requests",
    "Solution may be inaccurate", "transformers chatter",
)
OWN_WARNINGS = ("pvq: own log warning", "pvq: own python warning")


def test_third_party_chatter_shows_only_with_verbose_and_pvq_warnings_always(tmp_path):
    script = tmp_path / "chatty_figures.py"
    script.write_text(textwrap.dedent(CHATTY_FIGURES))
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    quiet, verbose = done.stderr.split("=== quiet ===")[1].split("=== verbose ===")
    assert [name for *_, name, _ in start_lines(quiet)] == ["theory_formats_gaussian"]
    assert not [text for text in THIRD_PARTY_CHATTER if text in quiet], quiet
    assert all(f"{text} (quiet)" in quiet for text in OWN_WARNINGS), quiet
    assert all(text in verbose for text in THIRD_PARTY_CHATTER), verbose
    assert all(f"{text} (verbose)" in verbose for text in OWN_WARNINGS), verbose
