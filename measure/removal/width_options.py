"""The width pruning options of a study as one model takes them: measured as requested, adapted by a stated rule,
or left out with the reason.

**Rule.** An option removes round(F · N) of the N units of its kind: KV groups (or, with ``unit=query``, query
heads per KV group) of every attention, channels of every MLP (N of the narrowest). When that count is 0 (nothing
removed) or N (nothing left) and N ≥ 2, the nearest feasible count, 1 or N − 1, is removed instead: the option's
fraction is rewritten as count / N and the row says ``adapted``. When N = 1 (one KV group, as in Gemma-3-270M) no
whole number of units can go with one left, and the option is ``left out``. Every other refusal of the model is
also a ``left out`` row with the refusal as its reason: heads of a fused q/k/v projection, widths the config
cannot describe, and heads under a norm over the whole q or k projection, which have no same-shape form for the
study's views (:func:`measure.compress.shrink.shrink.check_same_shape`).

Everything reads the config and the module structure only (:func:`measure.compress.shrink.shrink.shrink_counts`):
no calibration data, no forward pass, and a model on the meta device is checked like a loaded one.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from torch import nn

from measure.compress.shrink.shrink import ShrinkSettings, check_same_shape, head_unit_total, shrink_counts
from measure.compress.shrink.term import parse_shrink_term
from measure.compress.shrink.units import channel_units
from measure.models.architecture import Architecture, describe
from theory.errors import PvqError

WIDTH_OPTION_COLUMNS = ["option", "measured_option", "status", "reason"]
"""``option``: as requested; ``measured_option``: the option measured (empty when left out); ``status``: one of
:data:`STATUSES`; ``reason``: why it was adapted or left out (empty as requested)."""
AS_REQUESTED, ADAPTED, LEFT_OUT = "as requested", "adapted", "left out"
STATUSES = (AS_REQUESTED, ADAPTED, LEFT_OUT)


def feasible_count(fraction: float, total: int) -> int | None:
    """The units of ``total`` the rule removes for ``fraction`` > 0: round(fraction · total) moved into
    1..total − 1, or None when ``total`` < 2 (no unit can go with one left)."""
    if total < 2:
        return None
    return min(max(round(fraction * total), 1), total - 1)


def _unit_totals(arch: Architecture, settings: ShrinkSettings) -> list[tuple[str, float, int, str]]:
    """(field, fraction, units N, their name) of every part of an option that removes something."""
    parts = []
    if settings.heads:
        parts.append(("heads", settings.heads, *head_unit_total(arch, settings.head_unit)))
    if settings.mlp:
        width = min(unit.width for unit in channel_units(arch))
        parts.append(("mlp", float(settings.mlp), width, "channels of the narrowest MLP"))
    return parts


def _row(option: str, measured: str, status: str, reason: str) -> dict[str, str]:
    return {"option": option, "measured_option": measured, "status": status, "reason": reason}


def adapt_width_option(model: nn.Module, option: str) -> dict[str, str]:
    """One row of :data:`WIDTH_OPTION_COLUMNS`: how ``model`` takes width option ``option`` (the part after
    ``shrink:`` of a shrink term) under the module's rule. PvqError only for an option no model takes (an unknown
    token, a fraction outside [0, 1))."""
    tokens = option.split(":")
    settings = ShrinkSettings(**parse_shrink_term(tuple(tokens)))
    arch = describe(model)
    notes = []
    try:
        for key, fraction, total, what in _unit_totals(arch, settings):
            count, requested = feasible_count(fraction, total), round(fraction * total)
            if count is None:
                return _row(option, "", LEFT_OUT, f"{key}={fraction:g} removes whole {what}, and the model has "
                            f"{total} of them: none can go with one left")  # fmt: skip
            if count != requested:
                tokens = [f"{key}={count / total:.6g}" if token.startswith(f"{key}=") else token
                          for token in tokens]  # fmt: skip
                notes.append(f"{key}={fraction:g} removes round({fraction:g} · {total}) = {requested} of {total} "
                             f"{what}; the nearest feasible count, {count}, is removed instead")  # fmt: skip
        measured = ":".join(tokens)
        counts = shrink_counts(model, ShrinkSettings(**parse_shrink_term(tuple(tokens))))
        check_same_shape(arch.family, counts.projection_norms)
    except PvqError as error:
        return _row(option, "", LEFT_OUT, str(error))
    return _row(option, measured, ADAPTED if notes else AS_REQUESTED, "; ".join(notes))


def width_options_table(model: nn.Module, options: Sequence[str]) -> pd.DataFrame:
    """How ``model`` takes each of ``options`` (:func:`adapt_width_option`), one row each in their order."""
    return pd.DataFrame([adapt_width_option(model, option) for option in options], columns=WIDTH_OPTION_COLUMNS)


def measured_options(table: pd.DataFrame) -> list[str]:
    """The options a study measures: the ``measured_option`` of every row not left out, each once."""
    kept = table[table["status"] != LEFT_OUT]["measured_option"]
    return list(dict.fromkeys(str(option) for option in kept))
