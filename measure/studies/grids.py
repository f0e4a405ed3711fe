"""Grids of compressed models read on one capture of the original model: the joint frontier and the width-pruning
comparison, each on its calibration stream."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
import torch
from torch import nn

from measure.evaluation.perplexity import TokenWindows
from measure.mixture.joint_frontier import joint_frontier_table
from measure.removal.width import width_comparison_table
from measure.studies.inputs import original_capture


def joint_frontier_grid(
    model: nn.Module, batches: Sequence[torch.Tensor], windows: TokenWindows, specs: Sequence[str],
    calibration: str, batch_size: int, on_spec: Callable[[str], None] | None = None,
) -> pd.DataFrame:  # fmt: skip
    """:func:`measure.mixture.joint_frontier.joint_frontier_table` of ``specs``, calibrated on ``calibration``
    (:func:`measure.studies.inputs.original_capture` read by every spec when parallel)."""
    captured = original_capture(model, batches, calibration)
    return joint_frontier_table(model, batches, windows, specs, calibration=calibration, captured=captured,
                                batch_size=batch_size, on_spec=on_spec)  # fmt: skip


def width_pruning_grid(
    model: nn.Module, batches: Sequence[torch.Tensor], windows: TokenWindows, options: Sequence[str],
    calibration: str, batch_size: int, log: Callable[[str], None] = lambda message: None,
) -> pd.DataFrame:  # fmt: skip
    """:func:`measure.removal.width.width_comparison_table` of ``options`` on the original model's Grams
    (:func:`measure.studies.inputs.original_capture` of ``calibration``)."""
    captured = original_capture(model, batches, calibration)
    return width_comparison_table(model, batches, windows, options, captured, batch_size, log=log)
