"""Perplexity and KL of model variants that equal the original before some block, from the cached residual stream.

:class:`ResidualStreamEvaluator` caches the original model's residual stream at every block boundary and its
reference log-probabilities on the pinned evaluation windows; a variant that equals the original before block
``start`` is scored by running blocks start..L−1 only. It gives what
:func:`measure.evaluation.perplexity.evaluate_perplexity` gives for the variant with the original as reference
(tested), for a fraction of the cost.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Collection, Iterator
from dataclasses import replace

import torch
from torch import nn

from measure.capture.blocks import BlockInputs, record_block_inputs, run_block
from measure.evaluation.perplexity import (
    LOGITS_BUDGET_BYTES,
    PerplexityResult,
    ReferenceChunk,
    TokenCollector,
    TokenWindows,
    cached_token_statistics,
    final_hidden_states,
    output_head,
    scored_windows,
    token_statistics,
)
from measure.models.architecture import Architecture, check_block_indices, describe
from theory.errors import PvqError

REFERENCE_CACHE_BYTES = 1 << 31
"""The reference's log-probabilities and probabilities are kept (:class:`measure.evaluation.perplexity.
ReferenceChunk`) when together they take at most this many bytes (2 GiB: 8 × 512 tokens of SmolLM2's |V| = 49152
take 1.6 GB); otherwise every evaluation recomputes the reference's logits, doubling the output head's cost."""


def first_windows(windows: TokenWindows, count: int) -> TokenWindows:
    """The first ``count`` windows, with the protocol's max_windows and windows hash updated."""
    if not 1 <= count <= windows.input_ids.shape[0]:
        raise PvqError(f"asked for {count} evaluation windows; there are 1..{windows.input_ids.shape[0]}")
    input_ids, scored = windows.input_ids[:count], windows.scored[:count]
    digest = hashlib.sha256(input_ids.numpy().tobytes() + scored.numpy().tobytes()).hexdigest()
    protocol = replace(windows.protocol, max_windows=count, windows_sha256=digest)
    return TokenWindows(protocol=protocol, input_ids=input_ids, scored=scored)


class ResidualStreamEvaluator:
    """Perplexity and KL to the original model of variants equal to it before some block (module docstring).

    Construction runs the original once over ``windows`` and keeps the residual stream at every block boundary
    (L + 1 tensors per window batch). The reference's log-probabilities and probabilities take 2·windows·L·|V|·4
    bytes (1.6 GB for 8 × 512 tokens and |V| = 49152): they are kept when that is at most
    :data:`REFERENCE_CACHE_BYTES`, else recomputed from the kept final hidden states chunk by chunk at every
    evaluation.
    """

    def __init__(self, model: nn.Module, windows: TokenWindows, batch_size: int = 4,
                 arch: Architecture | None = None) -> None:  # fmt: skip
        self.arch = arch or describe(model)
        self.windows = windows
        batches = list(windows.input_ids.split(batch_size))
        self.predicts = [mask[:, 1:] for mask in windows.scored.split(batch_size)]
        self.window_of = [scored_windows(mask, k * batch_size) for k, mask in enumerate(self.predicts)]
        self.targets = [ids[:, 1:][mask] for ids, mask in zip(batches, self.predicts, strict=True)]
        self.head = output_head(model)
        with torch.no_grad():
            inputs = record_block_inputs(model, self.arch, batches)
            self.kwargs = inputs.kwargs
            self.states = [inputs.hidden]
            for block in self.arch.blocks:
                self.states.append(run_block(self.arch, block.index, BlockInputs(self.states[-1], self.kwargs)))
            self._check_final(model, batches[0][:1])
            self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
            self.rows_per_chunk = max(1, LOGITS_BUDGET_BYTES // (4 * self.vocab_size * 2))
            self.reference = self._rows(self.states[-1])
            rows = sum(len(targets) for targets in self.targets)
            self.cached = [] if 2 * rows * self.vocab_size * 4 > REFERENCE_CACHE_BYTES else [
                [ReferenceChunk.of(self.head(reference[first:first + self.rows_per_chunk]),
                                   targets[first:first + self.rows_per_chunk])
                 for first in range(0, len(reference), self.rows_per_chunk)]
                for reference, targets in zip(self.reference, self.targets, strict=True)]

    def _final(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden if self.arch.final_norm is None else self.arch.final_norm(hidden)

    def _rows(self, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
        """Final hidden states of the positions that predict a scored token, per window batch."""
        return [self._final(h)[:, :-1][mask] for h, mask in zip(hidden, self.predicts, strict=True)]

    def _check_final(self, model: nn.Module, probe: torch.Tensor) -> None:
        own = final_hidden_states(model, probe)
        ours = self._final(self.states[-1][0][:1])
        if own.shape != ours.shape or not torch.allclose(own, ours, rtol=1e-4, atol=1e-5 * float(own.abs().max())):
            raise PvqError(
                f"{type(model).__name__} does more than the final norm after its last block; "
                "the residual-stream evaluator does not support it (use evaluate_perplexity on each variant)"
            )

    def evaluate(self, skip: Collection[int] = (), start: int | None = None) -> PerplexityResult:
        """Score the model's current blocks from ``start`` on, skipping blocks ``skip`` (default start: the first
        skipped block, or L: the unchanged model). Blocks before ``start`` must be unchanged and kept."""
        blocks = len(self.arch.blocks)
        skipped = set(check_block_indices(skip, blocks))
        first_skipped = min(skipped, default=blocks)
        start = first_skipped if start is None else start
        if not 0 <= start <= first_skipped:
            raise PvqError(f"start block {start} must lie in 0..{first_skipped} (up to the first skipped block)")
        hidden = self.states[start]
        collector = TokenCollector()
        with torch.no_grad():
            for index in range(start, blocks):
                if index not in skipped:
                    hidden = run_block(self.arch, index, BlockInputs(hidden, self.kwargs))
            batches = zip(self._rows(hidden), self.targets, self.reference, self.window_of, strict=True)
            for batch, (rows, targets, reference, window_of) in enumerate(batches):
                for chunk, first in enumerate(range(0, len(targets), self.rows_per_chunk)):
                    part = slice(first, first + self.rows_per_chunk)
                    logits = self.head(rows[part])
                    if self.cached:
                        found = cached_token_statistics(logits, targets[part], self.cached[batch][chunk])
                    else:
                        found = token_statistics(logits, targets[part], self.head(reference[part]))
                    collector.add(found, window_of[part])
        return collector.result(int(self.windows.input_ids.shape[0]), self.vocab_size)


@contextlib.contextmanager
def restored(model: nn.Module) -> Iterator[None]:
    """Inside the context the model may be changed in place; its parameters and buffers are restored after."""
    saved = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    try:
        yield
    finally:
        model.load_state_dict(saved)
