"""The one thesis style: figure sizes, fonts, the colour-blind-safe palette and fixed method styles.

Sizes fit an A4 single-column thesis whose text block is 15 cm wide (``TEXT_WIDTH_IN``); figures are
drawn at their printed size, so 9 pt labels stay 9 pt on paper. Colours come from the Okabe–Ito
palette (Okabe & Ito, "Color Universal Design", 2008), distinguishable under the common colour-vision
deficiencies; each method always has the same colour *and* marker, so figures also read in grey.
Families differ by line style (quantization solid, pruning dashed, removal dotted, width pruning dash-dotted).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from cycler import cycler
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from pandas.io.formats.style import Styler

TEXT_WIDTH_CM = 15.0
TEXT_WIDTH_IN = TEXT_WIDTH_CM / 2.54
GOLDEN_HEIGHT_RATIO = 0.62

OKABE_ITO: dict[str, str] = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
}
REMOVAL_BROWNS = ("#543005", "#8C510A", "#BF812D", "#DFC27D")
"""The brown half of ColorBrewer's BrBG (colour-blind safe), dark to light: the block-removal orderings, a family
apart from the Okabe–Ito colours of every method."""
LEGEND_INSIDE_MAX = 8
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
DIVERGING_CMAP = "RdBu"  # ColorBrewer RdBu: diverging and colour-blind safe

THESIS_RC: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8,
    "axes.prop_cycle": cycler(color=list(OKABE_ITO.values())),
    "axes.grid": True,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.3,
    "lines.markersize": 4.5,
    "figure.dpi": 100,
    "savefig.dpi": 300,
    "savefig.bbox": "standard",
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "svg.hashsalt": "pvq",
    "image.cmap": DIVERGING_CMAP,
}


@dataclass(frozen=True)
class MethodStyle:
    """How one method is drawn in every figure."""

    color: str
    marker: str
    label: str
    filled: bool = True
    linestyle: str | None = None  # None: the family's line style


METHOD_STYLE: dict[str, MethodStyle] = {
    # quantization formats, by family of theory.formats
    "int": MethodStyle(OKABE_ITO["blue"], "o", "INT-$b$ (signed grid)"),
    "int-asym": MethodStyle(OKABE_ITO["sky_blue"], "D", "INT-$b$ (zero point)", filled=False, linestyle=":"),
    "fp": MethodStyle(OKABE_ITO["bluish_green"], "^", "FP (minifloat, per tensor)"),
    "mx": MethodStyle(OKABE_ITO["orange"], "X", "MX (OCP, block 32)"),
    "nf4": MethodStyle(OKABE_ITO["reddish_purple"], "P", "NF4 (block 64)"),
    "ternary": MethodStyle(OKABE_ITO["black"], "v", "Ternary (b1.58)"),
    # pruning
    "magnitude": MethodStyle(OKABE_ITO["vermillion"], "s", "Magnitude pruning"),
    "wanda": MethodStyle(OKABE_ITO["yellow"], "d", "Wanda"),
    "sparsegpt": MethodStyle(OKABE_ITO["reddish_purple"], "*", "SparseGPT", linestyle="--"),
    # LLM quantizers
    "rtn": MethodStyle(OKABE_ITO["sky_blue"], "o", "RTN", filled=False),
    "gptq": MethodStyle(OKABE_ITO["blue"], "h", "GPTQ"),
    "sparsegpt+gptq": MethodStyle(OKABE_ITO["bluish_green"], "p", "SparseGPT + GPTQ"),
    "rtn_g128": MethodStyle(OKABE_ITO["sky_blue"], "8", "RTN (g128)", filled=False),
    "gptq_g128": MethodStyle(OKABE_ITO["blue"], "p", "GPTQ (g128)"),
    "rtn_channel": MethodStyle(OKABE_ITO["sky_blue"], "<", "RTN (per channel)", filled=False, linestyle="-."),
    "gptq_channel": MethodStyle(OKABE_ITO["blue"], "H", "GPTQ (per channel)", linestyle="-."),
    "gaussian_rd": MethodStyle(OKABE_ITO["bluish_green"], "", "Gaussian RD reference", linestyle="-"),
    "gaussian_rd_joint": MethodStyle(OKABE_ITO["bluish_green"], "+", "Gaussian RD, joint", linestyle="--"),
    # layer removal orderings: one colour family of their own (browns), so no ordering takes a method's colour
    "remove:bi": MethodStyle(REMOVAL_BROWNS[0], ">", "Removal (BI, ShortGPT)", linestyle=":"),
    "remove:angular": MethodStyle(REMOVAL_BROWNS[1], "<", "Removal (angular)", linestyle=":"),
    "remove:reverse": MethodStyle(REMOVAL_BROWNS[2], "^", "Removal (reverse)", filled=False, linestyle=":"),
    "remove:random": MethodStyle(REMOVAL_BROWNS[3], "v", "Removal (random)", filled=False, linestyle=":"),
    # structured width pruning (measure.compress.shrink), consumers refit unless "norefit"
    "shrink_mlp": MethodStyle(OKABE_ITO["black"], "D", "Width: MLP"),
    "shrink_mlp_wanda": MethodStyle(OKABE_ITO["black"], "d", "Width: MLP (Wanda)"),
    "shrink_heads": MethodStyle(OKABE_ITO["reddish_purple"], "h", "Width: KV groups"),
    "shrink_mlp_norefit": MethodStyle(OKABE_ITO["black"], "8", "Width: MLP, no refit", filled=False),
    "shrink_heads_norefit": MethodStyle(OKABE_ITO["reddish_purple"], "H", "Width: KV, no refit", filled=False),
}
FAMILY_LINESTYLE: dict[str, str] = {"quantization": "-", "pruning": "--", "removal": ":", "width": "-."}


def method_style(method: str) -> MethodStyle:
    """The fixed style of ``method``; unknown methods get a deterministic palette colour and marker.

    The fallback is chosen by sha256 of the name (not Python's salted ``hash``), so a method keeps its
    look across runs and machines.
    """
    if method in METHOD_STYLE:
        return METHOD_STYLE[method]
    digest = int(hashlib.sha256(method.encode()).hexdigest(), 16)
    colors = list(OKABE_ITO.values())
    return MethodStyle(colors[digest % len(colors)], MARKERS[(digest // len(colors)) % len(MARKERS)], method)


def method_order(methods: Iterable[str]) -> list[str]:
    """Methods in legend order: those of :data:`METHOD_STYLE` in its order, then the others by name."""
    present = set(methods)
    known = [method for method in METHOD_STYLE if method in present]
    return known + sorted(present - set(known))


def line_kwargs(method: str, family: str) -> dict[str, Any]:
    """Matplotlib keywords drawing ``method`` (of ``family``) in its fixed style, with its legend label."""
    style = method_style(method)
    return {
        "color": style.color, "marker": style.marker, "label": style.label,
        "markerfacecolor": style.color if style.filled else "none",
        "linestyle": style.linestyle or FAMILY_LINESTYLE.get(family, "-"),
    }


def new_figure(
    nrows: int = 1, ncols: int = 1, height_ratio: float = GOLDEN_HEIGHT_RATIO, width_fraction: float = 1.0
) -> tuple[Figure, Any]:
    """A figure sized for the thesis text block (15 cm wide) and its axes, with constrained layout.

    Uses :class:`matplotlib.figure.Figure` directly (no pyplot state), so rendering is re-entrant and
    nothing needs closing. Call it inside ``matplotlib.rc_context(THESIS_RC)`` (the renderer does).
    """
    width = TEXT_WIDTH_IN * width_fraction
    figure = Figure(figsize=(width, width * height_ratio), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=True)
    return figure, axes


def method_legend(ax: Axes, **kwargs: Any) -> None:
    """A frameless legend inside the axes, or to their right when it has more than 8 entries."""
    handles, labels = ax.get_legend_handles_labels()
    if len(handles) > LEGEND_INSIDE_MAX:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, **kwargs)
    else:
        ax.legend(handles, labels, frameon=False, **kwargs)


MISSING_CELL = "–"
MINUS = "\u2212"
_HYPHEN_MINUS = re.compile(r"(?<![\w\\-])-(?=\.?\d)")


def true_minus(text: str) -> str:
    """``text`` with the hyphen before each number replaced by a minus sign (U+2212); ranges like ``4--6`` and
    words like ``g128-bit`` keep their hyphens."""
    return _HYPHEN_MINUS.sub(MINUS, text)


def _empty(column: pd.Series) -> bool:
    """Every cell of ``column`` missing, blank or already "–"."""
    return bool(column.map(lambda value: value is None or (not isinstance(value, str) and pd.isna(value))
                           or str(value).strip() in ("", MISSING_CELL)).all())  # fmt: skip


def thesis_table(df: pd.DataFrame, column_labels: Mapping[str, str], precision: int = 1) -> Styler:
    """A booktabs-ready Styler of the columns in ``column_labels`` (column -> LaTeX header), in that order,
    leaving out a column whose every cell is missing.

    Numbers get ``precision`` decimals (integers none) and a true minus sign (:func:`true_minus`), missing cells
    "–", text cells are LaTeX-escaped; headers are used as given (so they may hold math such as ``$b$``). The
    renderer calls ``Styler.to_latex(hrules=True)``, which emits ``\\toprule``/``\\midrule``/``\\bottomrule``.
    """
    kept = {column: label for column, label in column_labels.items() if not _empty(df[column])}
    shown = df[list(kept)].rename(columns=dict(kept))

    def cell(value: Any) -> str:
        if isinstance(value, (float, np.floating)) and not isinstance(value, bool):
            return true_minus(f"{value:.{precision}f}")
        return true_minus(str(value))

    return shown.style.format(cell, na_rep=MISSING_CELL, escape="latex").hide(axis="index")


def interval_bars(ax: Any, x: Any, values: Any, low: Any, high: Any, color: str, **kwargs: Any) -> None:
    """Vertical bars from ``low`` to ``high`` around ``values`` at ``x`` (a 95 % interval), no markers, small caps;
    a value outside its interval (rounding) draws a bar of length 0 on that side."""
    values, low, high = (np.asarray(a, dtype=float) for a in (values, low, high))
    spread = np.vstack([values - low, high - values]).clip(min=0)
    ax.errorbar(x, values, yerr=spread, fmt="none", ecolor=color, elinewidth=kwargs.pop("elinewidth", 0.5),
                capsize=1.5, **kwargs)  # fmt: skip
