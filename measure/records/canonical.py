"""Canonical JSON: one text per value, so equal configurations and protocols give equal cache keys and digests."""

from __future__ import annotations

import json
from typing import Any

from theory.errors import PvqError


def canonical_json(value: Any, *, stringify: bool = False) -> str:
    """Key-sorted compact JSON of ``value``.

    Strict by default: a value JSON cannot represent (an object, NaN, ±inf) is a PvqError, as experiment configs
    must be plain data. ``stringify=True`` writes such objects as ``str(value)`` instead (evaluation protocols
    record a few non-JSON values, e.g. a dtype, by their names).
    """
    if stringify:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        message = f"experiment config must be plain JSON (numbers, strings, lists, dicts): {error}"
        raise PvqError(message) from error
