"""The removal study's answer as table cells and short codes, shared by the one-model and the across-models
tables: series and view codes (defined in the tables' captions) and the cells of equivalent bits and of the best
or worst method at b(f)."""

from __future__ import annotations

import pandas as pd

VIEW_CODES = {"layer_energy": "LE", "layer_parameters": "LP", "block": "B", "end_to_end": "E2E"}
"""Short names of the views in the answer table (defined in its caption), so that it fits the text width."""
SERIES_CODES = {"rtn_g128": "R", "gptq_g128": "G", "rtn_channel": "Rc", "gptq_channel": "Gc", "magnitude": "M",
                "sparsegpt": "S", "wanda": "W"}  # fmt: skip
"""Short codes of the series in the answer table (defined in its caption)."""
SERIES_NAMES = {"gptq_g128": "GPTQ (g128)", "gptq_channel": "GPTQ (per channel)", "rtn_g128": "RTN (g128)",
                "rtn_channel": "RTN (per channel)", "magnitude": "magnitude pruning", "sparsegpt": "SparseGPT",
                "wanda": "Wanda"}  # fmt: skip
"""Display names of the series in captions and paragraphs."""


def equivalent_bits_cell(row: pd.Series, series: str) -> str:
    """An equivalent-bits cell: the value, or "< x" / "> x" when censored at the curve's end x."""
    bits, censored = row[f"equivalent_bits_{series}"], row.get(f"equivalent_bits_{series}_censored", "")
    if pd.isna(bits):
        return "–"
    prefix = {"below": "<", "above": ">"}.get(str(censored), "")
    return f"{prefix}{bits:.1f}"


def method_db_cell(row: pd.Series, which: str) -> str:
    """A "dB code" cell of the ``best`` or ``worst`` method at b(f)."""
    series, value = row.get(f"{which}_series"), row.get(f"{which}_db")
    if pd.isna(value):
        return "–"
    return f"{value:.1f} {SERIES_CODES.get(str(series), str(series))}"
