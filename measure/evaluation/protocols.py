"""The two protocols every result is measured under, in one place: which calibration windows a method is fitted
on (:class:`measure.data.calibration.CalibrationProtocol`) and which held-out windows end-to-end numbers are
scored on (:class:`EvaluationProtocol`), each with the model's BOS policy applied here and nowhere else.

The figures' defaults (:data:`FIGURES_CALIBRATION`, :data:`FIGURES_EVALUATION`), the CLI's arguments
(:mod:`pvq.commands.common`) and the evaluation requests of the scale-out grids
(:class:`measure.evaluation.request.EvaluationRequest`) all build these objects; the windows they cut are recorded
as :class:`measure.evaluation.perplexity.PerplexityProtocol` (text, tokenizer and token hashes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from measure.data.calibration import CalibrationProtocol, calibration_batches
from measure.data.text import evaluation_text
from measure.evaluation.perplexity import TokenWindows, bos_token_id_for, make_windows
from measure.models.load import LoadedModel


@dataclass(frozen=True)
class EvaluationProtocol:
    """The held-out windows end-to-end numbers are scored on: the first ``max_windows`` (every window when None)
    windows of ``window`` tokens of the evaluation text, ``stride`` tokens apart (non-overlapping when None), with
    BOS first when the model expects it (the scored tokens then exclude it)."""

    window: int = 512
    max_windows: int | None = None
    stride: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def windows(self, loaded: LoadedModel, text: Callable[[], str] = evaluation_text) -> TokenWindows:
        """The windows of ``text()`` (default: the held-out evaluation text) for ``loaded`` and its BOS policy."""
        bos = bos_token_id_for(loaded.tokenizer, loaded.bos_per_window)
        return make_windows(text(), loaded.tokenizer, self.window, self.stride, bos, self.max_windows)


def for_model(protocol: CalibrationProtocol, loaded: LoadedModel) -> CalibrationProtocol:
    """``protocol`` with the model's BOS policy (``bos``), as it is recorded with the results it calibrates."""
    return dataclasses.replace(protocol, bos=loaded.bos_per_window)


def model_calibration(loaded: LoadedModel, protocol: CalibrationProtocol
                      ) -> tuple[list[torch.Tensor], CalibrationProtocol]:  # fmt: skip
    """The calibration batches of ``protocol`` for ``loaded`` and the protocol as recorded (:func:`for_model`)."""
    recorded = for_model(protocol, loaded)
    return calibration_batches(loaded, recorded), recorded


FIGURES_CALIBRATION = CalibrationProtocol(sequences=8, sequence_length=512, batch_size=4)
"""Calibration of every model experiment of the figures: the first 8 windows of 512 tokens of the calibration text
(4096 tokens), in batches of 4."""
FIGURES_EVALUATION = EvaluationProtocol(window=512, max_windows=8)
"""Scoring of every end-to-end number of the figures: the first 8 non-overlapping windows of 512 tokens of the
held-out evaluation text (4088 scored tokens without BOS), every variant on the same tokens (paired)."""
STUDY_CALIBRATION = CalibrationProtocol(sequences=32, sequence_length=512, batch_size=4)
"""Calibration of ``pvq remove`` (its ``--study`` included) and ``pvq shrink``: 32 windows of 512 tokens."""
LEDGER_CALIBRATION = CalibrationProtocol()
"""Calibration of ``pvq ledger`` and of the compressed variants of ``pvq eval`` / ``pvq run``: 128 windows of 512
tokens (:class:`measure.data.calibration.CalibrationProtocol`'s defaults)."""
BOUNDS_CALIBRATION = CalibrationProtocol(sequences=16, sequence_length=512, batch_size=4)
"""Calibration of ``pvq bounds``: 16 windows of 512 tokens (``measure.bounds.bounds_for_model``'s defaults)."""
