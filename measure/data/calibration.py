"""Calibration token windows: the first N non-overlapping windows of L tokens of the calibration text.

The text is tokenized once; window i is tokens [i·L, (i+1)·L) (with BOS prepended and the window
shortened by one token when the model expects BOS). Deterministic: no random sampling, so every method
and every model variant sees the same tokens; the protocol is recorded with results.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from measure.data.text import named_text
from measure.models.load import LoadedModel
from theory.errors import PvqError


@dataclass(frozen=True)
class CalibrationProtocol:
    """How calibration windows were cut; recorded in provenance."""

    sequences: int = 128
    sequence_length: int = 512
    batch_size: int = 8
    bos: bool = False
    text: str = "wikipedia-calibration"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def token_windows(ids: torch.Tensor, count: int, length: int, bos_id: int | None) -> torch.Tensor:
    """``count`` non-overlapping windows of ``length`` tokens from a 1-D id tensor (BOS-prefixed if given)."""
    body = length - (1 if bos_id is not None else 0)
    if count < 1 or body < 1:
        raise PvqError(f"need at least one window of at least 2 tokens, got {count} windows of {length}")
    if ids.numel() < count * body:
        raise PvqError(
            f"the text has {ids.numel()} tokens, fewer than the {count} x {length} calibration tokens asked; "
            "ask for fewer or shorter windows"
        )
    windows = ids[: count * body].reshape(count, body)
    if bos_id is not None:
        windows = torch.cat([torch.full((count, 1), bos_id, dtype=windows.dtype), windows], dim=1)
    return windows


def text_batches(
    tokenizer: PreTrainedTokenizerBase, text: str, protocol: CalibrationProtocol
) -> list[torch.Tensor]:
    """The calibration windows of ``text`` as a list of (batch, length) id tensors."""
    if not text.strip():
        raise PvqError("the calibration text is empty")
    ids = torch.tensor(tokenizer(text, add_special_tokens=False).input_ids, dtype=torch.long)
    bos_id = tokenizer.bos_token_id if protocol.bos else None
    windows = token_windows(ids, protocol.sequences, protocol.sequence_length, bos_id)
    return list(windows.split(protocol.batch_size))


def calibration_batches(loaded: LoadedModel, protocol: CalibrationProtocol) -> list[torch.Tensor]:
    """The calibration windows of the text ``protocol.text`` names, cut by ``loaded``'s tokenizer."""
    return text_batches(loaded.tokenizer, named_text(protocol.text), protocol)
