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
from typing import Any

import numpy as np
import pandas as pd

from measure.removal.equal_size import equivalent_bits, value_at
from theory.sqnr import relative_error_db

RD_SERIES = "gaussian_rd"
WIDTH_FAMILY = "width"
"""Family of the structured width pruning points (:func:`measure.removal.terms.measure_width`)."""
"""Series name of the Gaussian rate–distortion reference in the points and answer tables."""
LEVEL_KEYS = ("ordering", "removed", "blocks", "removed_fraction", "bits_per_weight", "linear_bits_per_weight")


def _value_at_size(view_points: pd.DataFrame, series: str, curve: pd.DataFrame, level: Any
                   ) -> dict[str, Any] | None:  # fmt: skip
    """A method's quality at the level's size: end to end the spliced model of that level when there is one,
    else the curve's point at b(f) or the interpolation between the widths that bracket it."""
    if view_points["view"].iloc[0] == "end_to_end":
        mixed = view_points[view_points["mixed"] & (view_points["series"] == series)
                            & np.isclose(view_points["removed_fraction"], level.removed_fraction)]  # fmt: skip
        if not mixed.empty:
            row = mixed.iloc[0]
            return {"quality_db": float(row["quality_db"]), "interpolated": False,
                    "size_gap_bits": float(row["size_gap_bits"])}  # fmt: skip
    return value_at(curve, level.bits_per_weight)


def _answer_row(view_points: pd.DataFrame, curves: Mapping[str, pd.DataFrame], level: Any, view: str
                ) -> dict[str, Any]:  # fmt: skip
    removal = float(getattr(level, f"removal_error_{view}"))
    removal_db = relative_error_db(removal)
    at_size = {series: found for series, curve in curves.items() if series != RD_SERIES
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
    rd = value_at(curves[RD_SERIES], level.bits_per_weight) if RD_SERIES in curves else None
    row |= {"rd_db": rd["quality_db"] if rd else math.nan,
            "margin_rd_db": removal_db - rd["quality_db"] if rd else math.nan}  # fmt: skip
    for series, curve in curves.items():
        if series != RD_SERIES:
            bits, censored = equivalent_bits(curve, removal_db)
            row |= {f"equivalent_bits_{series}": bits, f"equivalent_bits_{series}_censored": censored}
    return row


def answer_table(levels: pd.DataFrame, points: pd.DataFrame, views: Sequence[str], mask_conventions: Sequence[str]
                 ) -> pd.DataFrame:  # fmt: skip
    """One row per (view, ordering, n removed, mask convention): the removal's error and dB, the best and worst
    method at b(f) and the margins to them, the RD reference (layer views), and every method's equivalent bits
    (module docstring). Width pruning points (family ``width``) are structured removals measured at their own
    sizes, not methods with a curve over size: the answer leaves them out. Margins are removal dB − method dB
    (negative: the removal is worse)."""
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
                             **_answer_row(view_points, curves, level, view)})
    return pd.DataFrame(rows)


def end_to_end_table(levels: pd.DataFrame, points: pd.DataFrame) -> pd.DataFrame:
    """PPL and KL of every removal level and every compressed model (free-mask sizes for pruners), one table:
    family, method, spec, removed, removed_fraction, bits_per_weight (per decoder parameter),
    linear_bits_per_weight (the same size per linear weight), perplexity, kl_to_reference_nats."""
    removal = pd.DataFrame({
        "family": "removal", "method": levels["ordering"], "spec": "remove:blocks=" + levels["blocks"],
        "removed": levels["removed"], "removed_fraction": levels["removed_fraction"],
        "bits_per_weight": levels["bits_per_weight"], "linear_bits_per_weight": levels["linear_bits_per_weight"],
        "perplexity": levels["perplexity"],
        "kl_to_reference_nats": levels["kl_to_reference_nats"],
    })  # fmt: skip
    rows = points[(points["view"] == "end_to_end") & (points["family"] != "reference")
                  & (points["mask_convention"].isna() | (points["mask_convention"] == "free"))]  # fmt: skip
    compression = pd.DataFrame({
        "family": rows["family"], "method": rows["series"], "spec": rows["term"], "removed": math.nan,
        "removed_fraction": rows["removed_fraction"], "bits_per_weight": rows["bits_per_weight"],
        "linear_bits_per_weight": rows["linear_bits_per_weight"], "perplexity": rows["perplexity"],
        "kl_to_reference_nats": rows["error"],
    })  # fmt: skip
    return pd.concat([removal, compression], ignore_index=True)
