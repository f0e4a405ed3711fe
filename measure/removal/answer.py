"""The removal study's answer: removal against every method at exactly equal size, per view (pure table logic).

Per view, removal level and mask convention (:func:`answer_table`): the removal's error and its dB
(−10·log10 error); the best and the worst method at b(f) — end to end the spliced model of that size, in the
local views the method's point at b(f) or the interpolation in dB between the two widths that bracket it
(:func:`measure.removal.equal_size.value_at`); the Gaussian rate–distortion reference at b(f) in the layer views;
the
margins, removal dB − method dB (negative: the removal is worse); and each method's equivalent bits, the size at
which it makes the removal's error (:func:`measure.removal.equal_size.equivalent_bits`, censored outside its
curve).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from measure.evaluation.intervals import paired_difference
from measure.evaluation.perplexity import PerplexityResult
from measure.removal.equal_size import equivalent_bits, value_at
from theory.accounting import BASE_BITS
from theory.sqnr import relative_error_db

RD_SERIES = "gaussian_rd"
RD_JOINT_SERIES = "gaussian_rd_joint"
"""Series name of the decoder-level Gaussian reference (rates water-filled jointly over the decoder's layers)."""
WIDTH_FAMILY = "width"
"""Family of the structured width pruning points (:func:`measure.removal.terms.measure_width`)."""
"""Series name of the Gaussian rate–distortion reference in the points and answer tables."""
LEVEL_KEYS = ("ordering", "removed", "blocks", "removed_fraction", "bits_per_decoder_parameter",
              "bits_per_linear_weight")
INTERVAL_COLUMNS = ["error_ci_low", "error_ci_high", "perplexity_ci_low", "perplexity_ci_high", "same_top_rate",
                    "kl_p99", "tokens"]  # fmt: skip
"""End-to-end interval columns of a point or level: the KL's 95 % block-bootstrap interval (``error_ci_*``, nats
per token), the perplexity's, the same-top-token rate, the 99th percentile of the per-token KL and the number of
scored tokens (:meth:`measure.evaluation.perplexity.PerplexityResult.interval_columns`)."""
OUTCOMES = ("removal better", "removal worse", "indistinguishable")
"""Verdict of removal against a method at equal size: better / worse only when the 95 % paired interval of the KL
difference excludes 0."""


def end_to_end_intervals(result: PerplexityResult | None) -> dict[str, float]:
    """:data:`INTERVAL_COLUMNS` of one evaluated model (NaN without a result or per-token scores)."""
    found = {} if result is None else result.interval_columns()
    if not found:
        return dict.fromkeys(INTERVAL_COLUMNS, math.nan)
    return {"error_ci_low": max(found["kl_to_reference_nats_ci_low"], 0.0),
            "error_ci_high": max(found["kl_to_reference_nats_ci_high"], 0.0),
            **{name: found[name] for name in INTERVAL_COLUMNS[2:]}}  # fmt: skip


@dataclass
class EndToEndTokens:
    """Per-token KL (nats) of every model evaluated end to end, by term (``remove:<blocks>`` for a removal set),
    and the bootstrap blocks of those tokens: what the paired intervals of the answer need."""

    kl: dict[str, np.ndarray] = field(default_factory=dict)
    blocks: np.ndarray | None = None

    def add(self, term: str, result: PerplexityResult) -> None:
        if result.tokens is not None and result.tokens.kl is not None:
            self.kl[term] = result.tokens.kl
            self.blocks = result.tokens.blocks


def removal_term(blocks: str) -> str:
    """The key of a removal set in :class:`EndToEndTokens`."""
    return f"remove:{blocks}"


def _outcome(low: float, high: float) -> str:
    """:data:`OUTCOMES` from the interval of KL_removal − KL_method."""
    return OUTCOMES[0] if high < 0 else OUTCOMES[1] if low > 0 else OUTCOMES[2]


def _value_at_size(view_points: pd.DataFrame, series: str, curve: pd.DataFrame, level: Any
                   ) -> dict[str, Any] | None:  # fmt: skip
    """A method's quality at the level's size: the spliced model of that level when there is one (in every view),
    else the curve's point at b(f) or the interpolation between the widths that bracket it."""
    mixed = view_points[view_points["mixed"].astype(bool) & (view_points["series"] == series)
                        & np.isclose(view_points["removed_fraction"], level.removed_fraction)]  # fmt: skip
    if not mixed.empty:
        row = mixed.iloc[0]
        return {"quality_db": float(row["quality_db"]), "interpolated": False,
                "size_gap_bits": float(row["size_gap_bits"]), "terms": [(str(row["term"]), 1.0)]}  # fmt: skip
    found = value_at(curve, level.bits_per_decoder_parameter)
    if found is not None:
        found = {**found, "terms": _terms_at(curve, found, float(level.bits_per_decoder_parameter))}
    return found


def _terms_at(curve: pd.DataFrame, found: Mapping[str, Any], size: float) -> list[tuple[str, float]]:
    """The curve's terms that make a value of :func:`value_at` and their weights (one point, or the two that
    bracket the size, weighted like the interpolation)."""
    bits = curve["bits_per_decoder_parameter"].to_numpy(float)
    low = str(curve["term"].iloc[int(np.argmin(np.abs(bits - found["low_bits"])))])
    high = str(curve["term"].iloc[int(np.argmin(np.abs(bits - found["high_bits"])))])
    if low == high:
        return [(low, 1.0)]
    span = found["high_bits"] - found["low_bits"]
    weight = (size - found["low_bits"]) / span if span else 0.0
    return [(low, 1 - weight), (high, weight)]


def _paired_columns(tokens: EndToEndTokens | None, level: Any, which: str, found: Mapping[str, Any]
                    ) -> dict[str, Any]:  # fmt: skip
    """KL_removal − KL_method at b(f), its 95 % paired interval and the outcome (:data:`OUTCOMES`); the method's
    per-token KL at b(f) is that of the model at b(f), or the weighted mean of the two bracketing models'."""
    names = [f"{which}_kl_difference", f"{which}_kl_difference_ci_low", f"{which}_kl_difference_ci_high"]
    removal = removal_term(level.blocks)
    terms = found.get("terms", [])
    if tokens is None or tokens.blocks is None or removal not in tokens.kl or not terms \
            or any(term not in tokens.kl for term, _ in terms):
        return {**dict.fromkeys(names, math.nan), f"{which}_outcome": ""}
    method = sum(weight * tokens.kl[term] for term, weight in terms)
    interval = paired_difference(tokens.kl[removal], method, tokens.blocks)
    return {names[0]: interval.mean, names[1]: interval.low, names[2]: interval.high,
            f"{which}_outcome": _outcome(interval.low, interval.high)}  # fmt: skip


def _answer_row(view_points: pd.DataFrame, curves: Mapping[str, pd.DataFrame], level: Any, view: str,
                tokens: EndToEndTokens | None, stored_bits: float | None) -> dict[str, Any]:  # fmt: skip
    removal = float(getattr(level, f"removal_error_{view}"))
    removal_db = relative_error_db(removal)
    at_size = {series: found for series, curve in curves.items() if not series.startswith(RD_SERIES)
               and (found := _value_at_size(view_points, series, curve, level)) is not None}  # fmt: skip
    row: dict[str, Any] = {"removal_error": removal, "removal_db": removal_db, "methods_at_size": len(at_size),
                           "interpolated": ",".join(s for s, v in at_size.items() if v["interpolated"]),
                           "size_gap_bits": max((abs(v.get("size_gap_bits", 0.0)) for v in at_size.values()),
                                                default=math.nan)}  # fmt: skip
    if at_size:
        best = max(at_size, key=lambda s: at_size[s]["quality_db"])
        worst = min(at_size, key=lambda s: at_size[s]["quality_db"])
        row |= {"best_series": best, "best_db": at_size[best]["quality_db"],
                "margin_best_db": removal_db - at_size[best]["quality_db"], "worst_series": worst,
                "worst_db": at_size[worst]["quality_db"],
                "margin_worst_db": removal_db - at_size[worst]["quality_db"]}
        if view == "end_to_end":
            row |= _paired_columns(tokens, level, "best", at_size[best])
            row |= _paired_columns(tokens, level, "worst", at_size[worst])
    rd = value_at(curves[RD_SERIES], level.bits_per_decoder_parameter) if RD_SERIES in curves else None
    row |= {"rd_db": rd["quality_db"] if rd else math.nan,
            "margin_rd_db": removal_db - rd["quality_db"] if rd else math.nan}  # fmt: skip
    low_error, high_error = _error_interval(level, view)
    for series, curve in curves.items():
        if not series.startswith(RD_SERIES):
            bits, censored = equivalent_bits(curve, removal_db)
            # a larger error (the interval's high end) is matched at fewer bits
            low = equivalent_bits(curve, relative_error_db(high_error))[0] if high_error > 0 else math.nan
            high = equivalent_bits(curve, relative_error_db(low_error))[0] if low_error > 0 else math.nan
            row |= {f"equivalent_bits_{series}": bits, f"equivalent_bits_{series}_censored": censored,
                    f"equivalent_bits_{series}_ci_low": low, f"equivalent_bits_{series}_ci_high": high}
            row |= break_even(series, bits, low, high, censored, float(level.removed_fraction), stored_bits)
    return row


def _error_interval(level: Any, view: str) -> tuple[float, float]:
    """The removal's error interval in ``view`` (end to end the KL's; local views have none: NaN)."""
    if view != "end_to_end":
        return math.nan, math.nan
    return float(getattr(level, "error_ci_low", math.nan)), float(getattr(level, "error_ci_high", math.nan))


def break_even(series: str, bits: float, low: float, high: float, censored: str, fraction: float,
               stored_bits: float | None) -> dict[str, Any]:  # fmt: skip
    """The break-even base B* = b_eq / (1 − f) of removing a fraction f against ``series`` with equivalent bits
    b_eq per decoder parameter (and its interval from b_eq's): at equal size, removal beats the method exactly when
    the model is stored at fewer than B* bits per parameter (removal keeps B(1 − f) of B bits; the method needs
    b_eq). Verdicts at base 16 (a bf16 source) and at the model's stored size: ``removal better`` when the base
    lies below B*'s interval, ``removal worse`` above it, ``indistinguishable`` inside it; censored b_eq give a
    one-sided B*."""
    keep = 1 - fraction
    value = bits / keep if keep > 0 else math.nan
    lo = (low if not math.isnan(low) else bits) / keep if keep > 0 else math.nan
    hi = (high if not math.isnan(high) else bits) / keep if keep > 0 else math.nan
    if censored == "above":  # removal better than the method at its largest size: B* is at least this
        hi = math.inf
    if censored == "below":
        lo = 0.0

    def verdict(base: float | None) -> str:
        if base is None or math.isnan(value):
            return ""
        return OUTCOMES[0] if base < lo else OUTCOMES[1] if base > hi else OUTCOMES[2]

    return {f"break_even_base_{series}": value, f"break_even_base_{series}_ci_low": lo,
            f"break_even_base_{series}_ci_high": hi, f"verdict_base16_{series}": verdict(float(BASE_BITS)),
            f"verdict_stored_{series}": verdict(stored_bits)}  # fmt: skip


def answer_table(levels: pd.DataFrame, points: pd.DataFrame, views: Sequence[str], mask_conventions: Sequence[str],
                 tokens: EndToEndTokens | None = None, stored_bits: float | None = None
                 ) -> pd.DataFrame:  # fmt: skip
    """One row per (view, ordering, n removed, mask convention): the removal's error and dB, the best and worst
    method at b(f) and the margins to them, the RD reference (layer views), and every method's equivalent bits
    (module docstring). Width pruning points (family ``width``) are structured removals measured at their own
    sizes, not methods with a curve over size: the answer leaves them out. Margins are removal dB − method dB
    (negative: the removal is worse). End to end, with ``tokens``, the best and worst method also get the paired
    interval of KL_removal − KL_method and an outcome (:data:`OUTCOMES`); every equivalent bits value gets the
    interval carried from the removal's KL interval through the method's curve, and the break-even base with
    verdicts at 16 bits and at ``stored_bits`` (:func:`break_even`)."""
    rows = []
    for view in views:
        view_points = points[points["view"] == view]
        for name in mask_conventions:
            convention = view_points["mask_convention"]
            chosen = view_points[~view_points["mixed"].astype(bool) & (convention.isna() | (convention == name))
                                 & (view_points["family"] != WIDTH_FAMILY)]  # fmt: skip
            curves = {series: curve for series, curve in chosen.groupby("series", sort=True)}
            for level in levels.itertuples():
                keys = {key: getattr(level, key) for key in LEVEL_KEYS}
                rows.append({"view": view, **keys, "mask_convention": name,
                             "stored_bits_per_decoder_parameter": math.nan if stored_bits is None else stored_bits,
                             "tokens": float(getattr(level, "tokens", math.nan)) if view == "end_to_end"
                             else math.nan,
                             **_answer_row(view_points, curves, level, view, tokens, stored_bits)})
    return pd.DataFrame(rows)


def end_to_end_table(levels: pd.DataFrame, points: pd.DataFrame) -> pd.DataFrame:
    """PPL and KL of every removal level and every compressed model (free-mask sizes for pruners), one table:
    family, method, spec, removed, removed_fraction, bits_per_decoder_parameter (per decoder parameter),
    bits_per_linear_weight (the same size per linear weight), perplexity, kl_to_reference_nats and the interval
    columns (:data:`INTERVAL_COLUMNS`; ``error_ci_*`` is the KL's)."""
    removal = pd.DataFrame({
        "family": "removal", "method": levels["ordering"], "spec": "remove:blocks=" + levels["blocks"],
        "removed": levels["removed"], "removed_fraction": levels["removed_fraction"],
        "bits_per_decoder_parameter": levels["bits_per_decoder_parameter"],
        "bits_per_linear_weight": levels["bits_per_linear_weight"],
        "perplexity": levels["perplexity"],
        "kl_to_reference_nats": levels["kl_to_reference_nats"],
        **{column: levels.get(column, math.nan) for column in INTERVAL_COLUMNS},
    })  # fmt: skip
    rows = points[(points["view"] == "end_to_end") & (points["family"] != "reference")
                  & (points["mask_convention"].isna() | (points["mask_convention"] == "free"))]  # fmt: skip
    compression = pd.DataFrame({
        "family": rows["family"], "method": rows["series"], "spec": rows["term"], "removed": math.nan,
        "removed_fraction": rows["removed_fraction"],
        "bits_per_decoder_parameter": rows["bits_per_decoder_parameter"],
        "bits_per_linear_weight": rows["bits_per_linear_weight"], "perplexity": rows["perplexity"],
        "kl_to_reference_nats": rows["error"],
        **{column: rows.get(column, math.nan) for column in INTERVAL_COLUMNS},
    })  # fmt: skip
    return pd.concat([removal, compression], ignore_index=True)
