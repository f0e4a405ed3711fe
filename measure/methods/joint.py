"""Prune, then quantize the kept weights: the composition of a pruning and a quantization method.

Storage (the accounting of :mod:`theory.accounting`, Kuzmin et al. 2023): the kept values cost the
quantizer's element bits b, the mask costs what the convention says, the per-group scales are paid in
full: ``bits = sparse_bits(p; base = b) + (quantizer bits − b)``, e.g. ``(1 − p)·b + mask + scales``.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from measure.compress.methods.method import Method
from measure.compress.methods.params import Param
from theory.accounting import Convention
from theory.errors import PvqError


def compose(pruner: Method, quantizer: Method) -> Method:
    """The joint method ``"<pruner>+<quantizer>"``; its params are ``{"prune": {...}, "quantize": {...}}``."""
    if pruner.kind != "pruning" or quantizer.kind != "quantization":
        raise PvqError(
            f"a joint method is PRUNING+QUANTIZATION; {pruner.name!r} is {pruner.kind} and "
            f"{quantizer.name!r} is {quantizer.kind}"
        )

    def compress(weight: torch.Tensor, gram: torch.Tensor | None, *, prune: dict, quantize: dict) -> torch.Tensor:
        pruned = pruner.compress(weight, gram, **prune)
        keep = pruned != 0
        if quantizer.accepts_keep:
            return quantizer.compress(pruned, gram, **quantize, keep=keep)
        return quantizer.compress(pruned, gram, **quantize) * keep

    def bits(params: dict, shape: tuple[int, int], convention: Convention) -> float:
        element = quantizer.element_bits(params["quantize"], shape)
        kept = pruner.bits(params["prune"], shape, replace(convention, base_bits=element))
        return kept + quantizer.bits(params["quantize"], shape, convention) - element

    return Method(
        name=f"{pruner.name}+{quantizer.name}",
        kind="joint",
        summary=f"{pruner.summary}, then {quantizer.summary} of the kept weights",
        needs_gram=pruner.needs_gram or quantizer.needs_gram,
        compress=compress,
        bits=bits,
        params=(
            Param("prune", {}, pruner.resolve, f"parameters of {pruner.name!r}"),
            Param("quantize", {}, quantizer.resolve, f"parameters of {quantizer.name!r}"),
        ),
    )
