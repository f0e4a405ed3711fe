"""Model-level spec terms: a term that transforms the whole model instead of compressing linear layers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class TermKind:
    """A spec term that transforms the whole model instead of compressing linear layers (e.g. ``remove:...``).

    ``parse(tokens)`` turns the term's tokens into checked parameters (PvqError on a bad token);
    ``apply(model, params, batches, device)`` changes the model in place and returns report fields;
    ``check(model, params)`` refuses (PvqError) parameters this model cannot take, from its config and module
    structure alone, before any calibration data is read (None: every model takes what ``parse`` accepts).
    """

    name: str
    summary: str
    parse: Callable[[tuple[str, ...]], dict[str, Any]]
    apply: Callable[[nn.Module, dict[str, Any], Sequence[torch.Tensor], str], dict[str, Any]]
    check: Callable[[nn.Module, dict[str, Any]], None] | None = None
