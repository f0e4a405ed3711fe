"""Capture calibration statistics: one Gram per shared layer input, and block residual-stream statistics.

Two capture modes (where the blocks run; :class:`measure.capture.placement.Placement`) give the same numbers (to
float tolerance; tested):

* ``"full"``: hooks on the model, one forward pass per calibration batch;
* ``"sequential"``: GPTQ-style, one block at a time on cached block inputs (:mod:`measure.capture.blocks`), so
  peak memory is about one block plus its inputs.

Layers that read the same tensor (q/k/v; gate/up; a parallel block's attention and MLP) share one Gram
(``LinearRef.shared_input_group``), which is both cheaper and exactly what their errors need.

Block statistics (for layer removal; see :mod:`measure.compress.importance`) are accumulated per token from the
block input x and output y: Σ cos(x_t, y_t), Σ‖y_t‖², Σ‖y_t − x_t‖², and per sequence the last token's
hidden state after every block (for the angular distance of Gromov et al.).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from measure.capture.blocks import BlockInputs, record_block_inputs, run_block
from measure.capture.gram import GramAccumulator
from measure.models import families
from measure.models.architecture import Architecture, Block, LinearRef, describe
from theory.errors import PvqError, choose

CAPTURE_MODES = ("full", "sequential")


@dataclass
class BlockStatistics:
    """Residual-stream statistics of one block over all calibration tokens."""

    index: int
    tokens: int = 0
    cosine_sum: float = 0.0
    output_energy: float = 0.0
    identity_error: float = 0.0
    last_token_outputs: list[torch.Tensor] = field(default_factory=list)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Accumulate a batch of block inputs x and outputs y, both (batch, tokens, hidden)."""
        # Reductions accumulate in float64 without float64 copies of the whole batch (large temporaries
        # fragment the heap: resident memory grew ~0.7 GB per 8x512 batch on SmolLM2).
        cosine = torch.nn.functional.cosine_similarity(x, y, dim=-1)
        self.cosine_sum += float(cosine.sum(dtype=torch.float64))
        self.output_energy += float(y.pow(2).sum(dtype=torch.float64))
        self.identity_error += float((y - x).pow(2).sum(dtype=torch.float64))
        self.tokens += x.shape[0] * x.shape[1]
        self.last_token_outputs.append(y[:, -1, :].to(device="cpu", dtype=torch.float64, copy=True))

    @property
    def mean_cosine(self) -> float:
        return self.cosine_sum / max(self.tokens, 1)


@dataclass
class Capture:
    """What a calibration pass collected."""

    grams: dict[str, GramAccumulator]
    group_of: dict[str, str]
    blocks: list[BlockStatistics]
    first_last_token: list[torch.Tensor]
    mode: str

    def gram_for(self, linear_name: str) -> GramAccumulator:
        """The Gram of the input of the linear layer called ``linear_name``."""
        if linear_name not in self.group_of:
            raise PvqError(f"no linear layer called {linear_name!r}; see `pvq info` for the names")
        return self.grams[self.group_of[linear_name]]

    @property
    def tokens(self) -> int:
        return self.blocks[0].tokens if self.blocks else 0

    def check_reusable(self, refs: Sequence[LinearRef], tokens: int) -> None:
        """PvqError unless this capture holds the Gram of every layer of ``refs`` over ``tokens`` tokens: the check
        before a caller reads it instead of capturing the same batches again."""
        if self.tokens != tokens or any(ref.shared_input_group not in self.grams for ref in refs):
            raise PvqError(
                f"the given capture ({self.tokens} tokens) is not of this model's layers on these {tokens} "
                "calibration tokens; capture again or pass captured=None"
            )


def _group_leaders(block: Block) -> dict[str, LinearRef]:
    leaders: dict[str, LinearRef] = {}
    for ref in block.linears:
        if ref.expert_index is not None:
            continue
        leaders.setdefault(ref.shared_input_group, ref)
    return leaders


BlockHooks = Callable[[Block], list[torch.utils.hooks.RemovableHandle]]
"""Registers extra forward hooks on one block (e.g. the expert Grams of :mod:`measure.capture.experts`);
returns them."""


def register_gram_hooks(
    block: Block, grams: dict[str, GramAccumulator], keep_rows: int, positions: slice = slice(None),
    accumulate: bool = True,
) -> list[torch.utils.hooks.RemovableHandle]:
    """Pre-hooks adding each shared input of ``block`` (routed experts excluded) to its Gram in ``grams``; only the
    sequence ``positions`` of every (batch, positions, features) input count (e.g. ``slice(1, None)``: not the
    first position of any window). ``accumulate=False``: keep the first ``keep_rows`` rows only, no Gram."""
    handles = []
    for group, ref in _group_leaders(block).items():
        accumulator = grams.setdefault(group, GramAccumulator(ref.in_features, keep_rows, group, accumulate))

        def hook(module: nn.Module, args: tuple, accumulator: GramAccumulator = accumulator) -> None:
            accumulator.add(args[0][:, positions] if args[0].dim() == 3 else args[0])

        source = _input_source(block, ref)
        if source is None:
            handles.append(ref.module.register_forward_pre_hook(hook))
        else:
            handles.append(source.register_forward_hook(lambda module, args, output, h=hook: h(module, (output,))))
    return handles


def _input_source(block: Block, ref: LinearRef) -> nn.Module | None:
    """The sibling module whose output is the input of a linear layer applied through its weight alone
    (`families.LINEAR_INPUT_SOURCES`, e.g. Jamba's dt_proj), or None when the layer is called as a module."""
    parent, _, leaf = ref.name.removeprefix(block.name + ".").rpartition(".")
    source = families.LINEAR_INPUT_SOURCES.get(leaf)
    if source is None:
        return None
    owner = block.module.get_submodule(parent) if parent else block.module
    return getattr(owner, source, None)


def _check_batches(batches: Sequence[torch.Tensor]) -> None:
    if not batches:
        raise PvqError("no calibration batches: the calibration text is empty or shorter than one window")


def capture(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    mode: str = "full",
    keep_rows: int = 0,
    device: str = "cpu",
    arch: Architecture | None = None,
    block_hooks: BlockHooks | None = None,
    positions: slice = slice(None),
) -> Capture:
    """Collect input Grams of every linear layer and block statistics over ``batches`` of token ids.

    ``block_hooks(block)``, when given, registers further hooks on every block for the same pass; ``positions``
    chooses the sequence positions the Grams count (block statistics count every position).
    """
    choose("capture mode", mode, CAPTURE_MODES)
    _check_batches(batches)
    arch = arch or describe(model)
    grams: dict[str, GramAccumulator] = {}
    group_of = {ref.name: ref.shared_input_group for ref in arch.linears if ref.expert_index is None}
    stats = [BlockStatistics(block.index) for block in arch.blocks]
    inputs = record_block_inputs(model, arch, batches)
    first = [h[:, -1, :].double() for h in inputs.hidden]
    if mode == "sequential":
        for block in arch.blocks:
            handles = register_gram_hooks(block, grams, keep_rows, positions) + (
                block_hooks(block) if block_hooks else [])
            try:
                outputs = run_block(arch, block.index, inputs, device=device)
            finally:
                for handle in handles:
                    handle.remove()
            for x, y in zip(inputs.hidden, outputs, strict=True):
                stats[block.index].add(x, y)
            inputs = BlockInputs(hidden=outputs, kwargs=inputs.kwargs)
        return Capture(grams, group_of, stats, first, mode)
    handles = [h for block in arch.blocks for h in register_gram_hooks(block, grams, keep_rows, positions)]
    handles += [h for block in arch.blocks for h in (block_hooks(block) if block_hooks else [])]
    handles += _register_block_stat_hooks(arch, stats)
    try:
        with torch.no_grad():
            for ids in batches:
                arch.backbone(input_ids=ids.to(next(model.parameters()).device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return Capture(grams, group_of, stats, first, mode)


def _register_block_stat_hooks(
    arch: Architecture, stats: list[BlockStatistics]
) -> list[torch.utils.hooks.RemovableHandle]:
    handles = []
    for block in arch.blocks:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: object, index: int = block.index) -> None:
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            stats[index].add(x.detach().cpu(), y.detach().cpu())

        handles.append(block.module.register_forward_hook(hook, with_kwargs=True))
    return handles
