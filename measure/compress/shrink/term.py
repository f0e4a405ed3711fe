"""The ``shrink`` spec term: structured width pruning inside any compression spec (``pvq eval --compress``).

``shrink:mlp=0.25:heads=0.34[:score=output|wanda|magnitude][:norefit][:unit=kv|query]`` removes the fraction
``mlp`` of every MLP's channels and ``heads`` of the KV groups (or, with ``unit=query``, of the query heads inside
every KV group), as :func:`measure.compress.shrink.shrink.shrink_model` does. The shrunk model takes the place of
the model
object (same class; its modules, parameters and config are those of the shrunk model), so the term composes with
the others of a spec and its size is counted on the smaller model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from measure.compress.shrink.shrink import ShrinkSettings, check_settings, shrink_counts, shrink_model
from measure.compress.term_kind import TermKind
from theory.accounting import removal_bits_per_weight
from theory.errors import PvqError

USAGE = "write shrink:mlp=0.25:heads=0.34[:score=output|wanda|magnitude][:norefit][:unit=kv|query]"


def parse_shrink_term(tokens: tuple[str, ...]) -> dict[str, Any]:
    """The :class:`ShrinkSettings` fields of a ``shrink`` term, checked (PvqError names the bad token)."""
    fields: dict[str, Any] = {}
    for token in tokens:
        key, equals, value = token.partition("=")
        if token == "norefit":
            fields["refit"] = False
        elif equals and key in ("mlp", "heads"):
            try:
                fields[key] = float(value)
            except ValueError:
                raise PvqError(f"shrink:{key}= takes a fraction in [0, 1), got {value!r}; {USAGE}") from None
        elif equals and key in ("score", "unit"):
            fields["score" if key == "score" else "head_unit"] = value
        else:
            raise PvqError(f"unknown shrink token {token!r}; {USAGE}")
    if not fields.get("mlp") and not fields.get("heads"):
        raise PvqError(f"a shrink term needs mlp=F and/or heads=F above 0; {USAGE}")
    check_settings(ShrinkSettings(**fields))
    return fields


def apply_shrink_term(
    model: nn.Module, params: dict[str, Any], batches: Sequence[torch.Tensor], device: str = "cpu"
) -> dict[str, Any]:
    """Shrink ``model`` (the object becomes the shrunk model); report the removed parameters, their fraction f of
    the decoder parameters and the equal-compression bits per decoder parameter 16(1 − f)."""
    result = shrink_model(model, batches, ShrinkSettings(**params))
    model.__dict__.update(result.model.__dict__)
    return {**result.record() | {"kept": None},
            "equal_compression_bits_per_weight": removal_bits_per_weight(result.removed_fraction)}  # fmt: skip


def check_shrink_term(model: nn.Module, params: dict[str, Any]) -> None:
    """PvqError, before any capture, when ``model`` cannot take the shrink (:func:`shrink_counts`)."""
    shrink_counts(model, ShrinkSettings(**params))


SHRINK_TERM = TermKind(
    name="shrink",
    summary="structured width pruning: remove MLP channels and attention heads, refit the consumers",
    parse=parse_shrink_term,
    apply=apply_shrink_term,
    check=check_shrink_term,
)
"""The ``shrink`` model-level spec term; :data:`measure.compress.spec.TERM_KINDS` maps "shrink" to it."""
