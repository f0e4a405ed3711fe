"""A registered compression method: a pure function, its parameter schema and its bits-per-weight formula."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from measure.compress.methods.checks import check_gram, check_weight
from measure.compress.methods.params import BitsFunction, Param, resolve_params
from theory.accounting import Convention
from theory.errors import PvqError

KINDS = ("pruning", "quantization", "joint")
DEFAULT_CONVENTION = Convention()
Compress = Callable[..., torch.Tensor]
"""``compress(weight, gram, **params) -> weight_hat``: float64 in, float64 out, same shape."""


@dataclass(frozen=True)
class Method:
    """One compression method.

    ``compress`` is pure (weight and Gram in, compressed weight out); ``bits`` gives its storage cost.
    ``positional`` lists the parameters a spec gives by position, in order (``gptq:4`` → bits=4).
    ``element_bits`` (quantization) is the per-value part of ``bits``: what a kept value costs after
    pruning, the rest being per-group overhead. ``accepts_keep`` marks quantizers that take a keep-mask
    and keep pruned weights at zero themselves (GPTQ redistributes error, so masking afterwards is wrong).
    """

    name: str
    kind: str
    summary: str
    needs_gram: bool
    compress: Compress
    bits: BitsFunction
    params: tuple[Param, ...] = ()
    positional: tuple[str, ...] = ()
    element_bits: Callable[[dict[str, Any], tuple[int, int]], float] | None = None
    accepts_keep: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PvqError(f"method {self.name!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        names = [param.name for param in self.params]
        if not set(self.positional) <= set(names):
            raise PvqError(f"method {self.name!r}: positional parameters {self.positional} not all in {names}")

    def resolve(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """All parameters with defaults filled in and values checked (PvqError names any bad one)."""
        return resolve_params(self.name, self.params, params or {})

    def apply(
        self, weight: torch.Tensor, gram: torch.Tensor | None = None, params: Mapping[str, Any] | None = None
    ) -> torch.Tensor:
        """Compressed copy of ``weight`` (same shape and dtype), computed in float64."""
        check_weight(weight)
        check_gram(gram, weight.shape[1], self.needs_gram, self.name)
        resolved = self.resolve(params)
        gram64 = None if gram is None else gram.detach().double()
        weight_hat = self.compress(weight.detach().double(), gram64, **resolved)
        return weight_hat.to(weight.dtype)

    def bits_per_weight(
        self, params: Mapping[str, Any] | None, shape: tuple[int, int], convention: Convention = DEFAULT_CONVENTION
    ) -> float:
        """Storage cost in bits per original weight of an ``out × in`` layer, overheads included."""
        if len(shape) != 2 or min(shape) < 1:
            raise PvqError(f"shape must be (out_features, in_features) with both >= 1, got {shape!r}")
        return self.bits(self.resolve(params), tuple(shape), convention)
