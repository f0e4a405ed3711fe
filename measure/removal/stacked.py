"""The removal study stored as one table: every part of :class:`measure.removal.study.RemovalStudy` stacked with
a ``table`` column naming its part, plus a ``base`` part (the original model's perplexity and stored size).

The one storage shape of the study: ``pvq figures`` caches it as the ``removal_study`` experiment and ``pvq remove
--study`` writes it as ``OUT/removal_study.parquet``; :func:`study_part` reads a part back.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from measure.models.stored_size import StoredSize
from measure.removal.study import RemovalStudy

STUDY_TABLE = "removal_study"
"""The stacked table's name (experiment name and file stem)."""


def stack_parts(parts: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The study's tables as one frame with a ``table`` column; mixed object columns become numbers or strings
    so that parquet can store them."""
    stacked = pd.concat([part.assign(table=name) for name, part in parts.items()], ignore_index=True)
    for column in stacked.columns[stacked.dtypes.map(pd.api.types.is_object_dtype)]:
        try:
            stacked[column] = pd.to_numeric(stacked[column])
        except (TypeError, ValueError):
            stacked[column] = stacked[column].astype("string")
    return stacked


def study_part(frame: pd.DataFrame, part: str) -> pd.DataFrame:
    """Rows of the stacked study table that belong to ``part``, without the columns other parts use."""
    rows = frame[frame["table"] == part].drop(columns="table").dropna(axis=1, how="all")
    return rows.reset_index(drop=True)


def stored_columns(stored: StoredSize | None) -> dict[str, float]:
    """The model's stored size as columns of the ``base`` part: ``stored_bits_per_decoder_parameter`` and
    ``stored_bits_per_linear_weight`` (NaN when not known)."""
    if stored is None:
        return {"stored_bits_per_decoder_parameter": np.nan, "stored_bits_per_linear_weight": np.nan}
    return {"stored_bits_per_decoder_parameter": float(stored.bits_per_decoder_parameter),
            "stored_bits_per_linear_weight": float(stored.bits_per_linear_weight)}  # fmt: skip


def stacked_study(study: RemovalStudy, stored: StoredSize | None) -> pd.DataFrame:
    """Every table of ``study`` stacked (:func:`stack_parts`) plus the ``base`` part: the summary's base numbers
    (the original model's perplexity) and the model's stored size (:func:`stored_columns`)."""
    base = {**study.summary["base"], **stored_columns(stored)}
    return stack_parts({**study.tables, "base": pd.DataFrame([base])})
