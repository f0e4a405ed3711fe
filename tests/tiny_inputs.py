"""Seeded token inputs for the tiny models of :mod:`tiny_models`, shared by the tests.

`token_ids(seed, rows, length)` draws ids in ``[low, high)`` (3..299 by default: no special token, inside the
tiny vocabulary) from a generator seeded with ``seed``; `token_batches` splits such a draw into calibration
batches of 2 windows. `text_ids` and `windows_of` are a random "text" of ids 2..319 and its perplexity windows
cut by :func:`measure.evaluation.perplexity.cut_windows`. Each test names its seed and shape, so the numbers a
test sees are those of its former local copy.
"""

from __future__ import annotations

import torch
from tiny_models import TINY_VOCAB_SIZE

from measure.evaluation.perplexity import PerplexityProtocol, TokenWindows, cut_windows


def token_ids(seed: int, rows: int = 4, length: int = 16, low: int = 3, high: int = 300) -> torch.Tensor:
    """``rows × length`` ids drawn uniformly from ``[low, high)``, generator seeded with ``seed``."""
    return torch.randint(low, high, (rows, length), generator=torch.Generator().manual_seed(seed))


def token_batches(seed: int, length: int = 16, low: int = 3, high: int = 300) -> list[torch.Tensor]:
    """Two calibration batches of 2 windows × ``length`` tokens: :func:`token_ids` of 4 rows split in halves."""
    return list(token_ids(seed, 4, length, low, high).split(2))


def text_ids(n: int = 150, seed: int = 1) -> torch.Tensor:
    """A 1-D random "text" of ``n`` ids in ``[2, TINY_VOCAB_SIZE)``."""
    return torch.randint(2, TINY_VOCAB_SIZE, (n,), generator=torch.Generator().manual_seed(seed))


def windows_of(ids: torch.Tensor, window: int, stride: int | None = None, bos: int | None = None) -> TokenWindows:
    """The perplexity windows of ``ids`` (``window`` tokens, BOS first if ``bos`` is given) and their protocol."""
    input_ids, scored = cut_windows(ids, window, stride, bos, None)
    content = window - (bos is not None)
    protocol = PerplexityProtocol(window, stride or content, bos is not None, None, "ids", "", len(ids), "")
    return TokenWindows(protocol, input_ids, scored)
