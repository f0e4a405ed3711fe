"""Run a model one decoder block at a time on cached block inputs (GPTQ's layer-sequential scheme).

The backbone computes, before its block loop, the per-block keyword arguments (attention masks, which
differ per block for sliding-window layers; rotary position embeddings; position ids). They depend only
on the batch *shape* for unpadded causal-LM input, so :func:`record_block_inputs` runs the backbone
once per distinct batch shape with every block replaced by the identity (nothing but the embeddings is
computed), recording block 0's hidden states and every block's keyword arguments. Afterwards
:func:`run_block` pushes cached hidden states through one block at a time, so peak memory is one block
plus its inputs; a block can be moved to an accelerator for its turn (``device``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from measure.models import families
from measure.models.architecture import Architecture

DROPPED_KWARGS = ("past_key_values", "past_key_value", "layer_past", "use_cache", "cache_position")


@dataclass
class BlockInputs:
    """Hidden states entering the current block, one tensor per calibration batch (kept on ``store``)."""

    hidden: list[torch.Tensor]
    kwargs: list[dict[tuple[int, ...], dict[str, Any]]] = field(default_factory=list)

    def kwargs_for(self, block_index: int, hidden: torch.Tensor) -> dict[str, Any]:
        """The recorded keyword arguments of block ``block_index`` for a batch shaped like ``hidden``."""
        return self.kwargs[block_index][tuple(hidden.shape[:2])]


def _to(value: Any, device: torch.device | str) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


class _IdentityBlock:
    """Context manager: every block returns its input unchanged (as `(hidden, None)` for the families whose
    backbone reads a tuple from its blocks) and records its keyword arguments."""

    def __init__(self, arch: Architecture, on_call: Callable[[int, torch.Tensor, dict[str, Any]], None]) -> None:
        self.arch = arch
        self.on_call = on_call

    def __enter__(self) -> _IdentityBlock:
        as_tuple = self.arch.family in families.TUPLE_OUTPUT_BLOCK_FAMILIES
        for block in self.arch.blocks:
            def identity(*args: Any, _index: int = block.index, **kwargs: Any) -> torch.Tensor | tuple:
                hidden = args[0] if args else kwargs.pop("hidden_states")
                self.on_call(_index, hidden, {k: v for k, v in kwargs.items() if k not in DROPPED_KWARGS})
                return (hidden, None) if as_tuple else hidden
            block.module.forward = identity
        return self

    def __exit__(self, *exc: object) -> None:
        for block in self.arch.blocks:
            del block.module.forward


def record_block_inputs(
    model: nn.Module, arch: Architecture, batches: Sequence[torch.Tensor], store: str = "cpu"
) -> BlockInputs:
    """Block 0's input hidden states per batch and every block's keyword arguments per batch shape."""
    inputs = BlockInputs(hidden=[], kwargs=[{} for _ in arch.blocks])
    shape: tuple[int, ...] = ()

    def on_call(index: int, hidden: torch.Tensor, kwargs: dict[str, Any]) -> None:
        if index == 0:
            inputs.hidden.append(hidden.detach().to(store))
        inputs.kwargs[index].setdefault(shape, _to(kwargs, store))

    device = next(model.parameters()).device
    with torch.no_grad(), _IdentityBlock(arch, on_call):
        for ids in batches:
            shape = tuple(ids.shape[:2])
            arch.backbone(input_ids=ids.to(device), use_cache=False)
    return inputs


def block_output(output: Any) -> torch.Tensor:
    """The hidden states a decoder block returns (a tensor, or the first item of a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def run_block(
    arch: Architecture,
    index: int,
    inputs: BlockInputs,
    device: torch.device | str = "cpu",
    store: str = "cpu",
) -> list[torch.Tensor]:
    """Outputs of block ``index`` for every cached input batch; the block visits ``device`` for its turn."""
    block = arch.blocks[index].module
    home = next(block.parameters()).device
    block.to(device)
    outputs = []
    with torch.no_grad():
        for hidden in inputs.hidden:
            kwargs = _to(inputs.kwargs_for(index, hidden), device)
            outputs.append(block_output(block(hidden.to(device), **kwargs)).to(store))
    block.to(home)
    return outputs
