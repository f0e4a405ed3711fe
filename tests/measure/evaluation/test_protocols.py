"""The calibration and evaluation protocols in one place (:mod:`measure.evaluation.protocols`): the model's BOS
policy is applied there, the windows equal those :func:`make_windows` cuts by hand, and every command's
calibration arguments default to a named protocol object."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tiny_models import tiny_tokenizer

from measure.data.calibration import CalibrationProtocol, text_batches
from measure.evaluation.perplexity import make_windows
from measure.evaluation.protocols import (
    FIGURES_CALIBRATION,
    LEDGER_CALIBRATION,
    STUDY_CALIBRATION,
    EvaluationProtocol,
    for_model,
)
from pvq.commands.common import add_calibration_arguments, calibration_protocol

ROOT = Path(__file__).resolve().parents[3]
TEXT = " ".join(f"word {i} of a held-out text." for i in range(400))


@pytest.mark.parametrize("bos", [False, True])
def test_evaluation_windows_follow_the_models_bos_policy(bos: bool) -> None:
    tokenizer = tiny_tokenizer()
    loaded = SimpleNamespace(tokenizer=tokenizer, bos_per_window=bos)
    protocol = EvaluationProtocol(window=32, max_windows=3)
    windows = protocol.windows(loaded, lambda: TEXT)
    by_hand = make_windows(TEXT, tokenizer, 32, None, tokenizer.bos_token_id if bos else None, 3)
    assert torch.equal(windows.input_ids, by_hand.input_ids)
    assert windows.protocol == by_hand.protocol
    assert windows.protocol.bos is bos and windows.input_ids.shape == (3, 32)
    assert bool((windows.input_ids[:, 0] == tokenizer.bos_token_id).all()) is bos


def test_the_calibration_protocol_is_recorded_with_the_models_bos_policy() -> None:
    loaded = SimpleNamespace(bos_per_window=True)
    recorded = for_model(FIGURES_CALIBRATION, loaded)
    assert recorded.bos and (recorded.sequences, recorded.sequence_length, recorded.batch_size) == (8, 512, 4)
    batches = text_batches(tiny_tokenizer(), TEXT, CalibrationProtocol(2, 16, 1, bos=True))
    assert [b.shape for b in batches] == [(1, 16), (1, 16)]


@pytest.mark.parametrize("default", [FIGURES_CALIBRATION, STUDY_CALIBRATION, LEDGER_CALIBRATION])
def test_cli_arguments_default_to_the_named_protocol_and_read_back(default: CalibrationProtocol) -> None:
    parser = argparse.ArgumentParser()
    add_calibration_arguments(parser, default)
    assert calibration_protocol(parser.parse_args([]), default) == default
    asked = calibration_protocol(parser.parse_args(["--sequences", "3", "--seq-len", "64", "--batch-size", "2"]),
                                 default)  # fmt: skip
    assert (asked.sequences, asked.sequence_length, asked.batch_size) == (3, 64, 2)


def test_no_module_outside_the_protocols_cuts_calibration_or_evaluation_windows_by_hand() -> None:
    """The model's BOS policy is applied in :mod:`measure.evaluation.protocols` only: nothing else builds a
    CalibrationProtocol with ``bos=`` or calls make_windows with the evaluation or calibration text."""
    offenders = []
    for path in [*ROOT.glob("measure/**/*.py"), *ROOT.glob("figures/**/*.py"), *ROOT.glob("pvq/**/*.py")]:
        text = path.read_text()
        if path.name == "protocols.py":
            continue
        by_hand = (r"CalibrationProtocol\([^)]*bos=", r"make_windows\(\s*(evaluation|calibration)_text")
        if any(re.search(pattern, text) for pattern in by_hand):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
