"""What several studies read once before their variants: the original model's Grams."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from measure.capture.statistics import Capture, capture
from measure.compress.spec import CALIBRATION_STREAMS
from theory.errors import choose


def original_capture(model: nn.Module, batches: Sequence[torch.Tensor], calibration: str) -> Capture | None:
    """Grams of the unmodified ``model`` on ``batches`` when compression is calibrated on the original model's
    stream (``calibration="parallel"``: every spec of a study then reads them, ``apply_spec(..., captured=...)``,
    instead of capturing them again), else None (``"sequential"``: each spec captures its own stream)."""

    choose("calibration", calibration, CALIBRATION_STREAMS)
    return capture(model, batches) if calibration == "parallel" else None
