"""Parameter schemas of the compression methods: one :class:`Param` per knob, each with its own coercion.

A spec such as ``gptq:4:g128:mse`` maps onto a method's parameters by position (``Method.positional``),
by token prefix (``Param.prefix``: ``g128`` → ``group=128``) and by flag words (``Param.flags``:
``mse`` → ``clip="mse"``, ``asym`` → ``symmetric=False``). Every coercion accepts the typed value
or its string form, so a parser can hand over the raw tokens and get back checked values or a
:class:`~theory.errors.PvqError` that names the parameter and the allowed values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from theory.accounting import Convention
from theory.errors import PvqError

BitsFunction = Callable[[dict[str, Any], tuple[int, int], Convention], float]
"""``bits(params, (out, in), convention) -> bits per weight`` of a method at resolved parameters."""

GROUP_WORDS = ("tensor", "channel")
CLIP_CHOICES = ("minmax", "mse")


@dataclass(frozen=True)
class Param:
    """One method parameter: its name, default, coercion (raises PvqError on bad values) and meaning."""

    name: str
    default: Any
    coerce: Callable[[Any], Any]
    doc: str
    prefix: str = ""
    flags: tuple[tuple[str, Any], ...] = ()

    def value(self, raw: Any) -> Any:
        """The checked value of ``raw`` (``None`` keeps an optional parameter unset)."""
        if raw is None:
            return None
        try:
            return self.coerce(raw)
        except PvqError as error:
            raise PvqError(f"parameter {self.name!r}: {error}") from None


def resolve_params(method_name: str, schema: tuple[Param, ...], given: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults filled in, unknown names rejected, every value coerced by its :class:`Param`."""
    known = {param.name: param for param in schema}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise PvqError(
            f"method {method_name!r} has no parameter {', '.join(map(repr, unknown))}; "
            f"its parameters are: {', '.join(known) or 'none'}"
        )
    return {name: param.value(given.get(name, param.default)) for name, param in known.items()}


def as_fraction(raw: Any) -> float:
    """A sparsity-like fraction in [0, 1)."""
    value = _as_number(raw, float)
    if not 0 <= value < 1:
        raise PvqError(f"must lie in [0, 1), got {raw!r}")
    return value


def as_bits(low: int, high: int) -> Callable[[Any], int]:
    """An integer bit width in ``[low, high]``."""

    def coerce(raw: Any) -> int:
        value = _as_number(raw, int)
        if not low <= value <= high:
            raise PvqError(f"must be an integer in {low}..{high}, got {raw!r}")
        return value

    return coerce


def as_positive_int(raw: Any) -> int:
    """An integer >= 1."""
    value = _as_number(raw, int)
    if value < 1:
        raise PvqError(f"must be an integer >= 1, got {raw!r}")
    return value


def as_positive_float(raw: Any) -> float:
    """A finite float > 0."""
    value = _as_number(raw, float)
    if not value > 0 or math.isinf(value):
        raise PvqError(f"must be a finite number > 0, got {raw!r}")
    return value


def as_bool(raw: Any) -> bool:
    """``True``/``False`` or one of the strings true/false, yes/no, 1/0."""
    if isinstance(raw, bool):
        return raw
    words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if isinstance(raw, str) and raw.lower() in words:
        return words[raw.lower()]
    raise PvqError(f"must be true or false, got {raw!r}")


def as_choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    """One of ``choices``."""

    def coerce(raw: Any) -> str:
        if raw not in choices:
            raise PvqError(f"must be one of {', '.join(choices)}; got {raw!r}")
        return raw

    return coerce


def as_group(raw: Any) -> str | int:
    """Scale granularity: ``"tensor"`` (one scale), ``"channel"`` (one per output row) or a group size g >= 1."""
    if raw in GROUP_WORDS:
        return raw
    try:
        return as_positive_int(raw)
    except PvqError:
        raise PvqError(f"must be 'tensor', 'channel' or a group size >= 1, got {raw!r}") from None


def as_nm(raw: Any) -> tuple[int, int]:
    """An N:M pattern, ``"2:4"`` or ``(2, 4)``: N weights kept in every M consecutive input columns."""
    parts = raw.split(":") if isinstance(raw, str) else raw
    try:
        n, m = (int(part) for part in parts)
    except (TypeError, ValueError):
        raise PvqError(f"must be an N:M pattern such as '2:4', got {raw!r}") from None
    if not 0 < n < m:
        raise PvqError(f"N:M needs 0 < N < M, got {n}:{m}")
    return n, m


def _as_number(raw: Any, kind: type) -> Any:
    if isinstance(raw, bool):
        raise PvqError(f"must be a number, got {raw!r}")
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise PvqError(f"must be {'an integer' if kind is int else 'a number'}, got {raw!r}") from None
    if kind is int and isinstance(raw, float) and raw != value:
        raise PvqError(f"must be an integer, got {raw!r}")
    if kind is float and math.isnan(value):
        raise PvqError("must be a number, got NaN")
    return value
