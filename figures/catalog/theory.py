"""Theory figures: quantization vs magnitude pruning at equal compression on known weight distributions.

Reproduces the analytic comparison of Kuzmin et al. (NeurIPS 2023, Sec. 3): SQNR of a Gaussian under
INT-b and the other formats of :mod:`theory.formats` against magnitude pruning of the same size, and
SQNR(INT-b) − SQNR(pruning) over kurtosis × bits on Student-t laws, once with the quantizer clipped
MSE-optimally and once with its range set to the largest |w| of a truncated law (no clipping).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.contour import QuadContourSet
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator, NullFormatter, StrMethodFormatter
from pandas.io.formats.style import Styler

from figures.answers import prose
from figures.experiments import ExperimentContext, experiment
from figures.registry import Tables, escape_tex, figure, table
from figures.style import (
    DIVERGING_CMAP,
    line_kwargs,
    method_legend,
    method_order,
    method_style,
    new_figure,
    thesis_table,
)
from theory.accounting import PAPER_CONVENTION, Convention
from theory.formats import FORMATS as THEORY_FORMATS
from theory.study import COMPARISON_COLUMNS, FORMAT_COLUMNS, format_sqnr_table, kurtosis_bits_table

SECTION = "Quantization versus pruning in theory"
FORMATS = "theory_formats_gaussian"
KURTOSIS_MSE = "theory_kurtosis_bits"
KURTOSIS_RANGE = "theory_kurtosis_bits_truncated"
INT_SERIES = "int"
BITS = list(range(2, 9))
KURTOSES = [round(float(k), 4) for k in np.geomspace(3.5, 30.0, 20)]
TRUNCATE_SIGMA = 10.0
PRUNING_WINS_HATCH = "////"
KURTOSIS_TICKS = (3, 4, 5, 6, 7, 10, 15, 20, 30, 50, 100)


def series(method: str) -> str:
    """The style/line a method belongs to: its format family (``int``, ``fp``, ``mx``, ...) or itself."""
    return THEORY_FORMATS[method].family if method in THEORY_FORMATS else method


def _convention(config: Mapping[str, Any]) -> Convention:
    return Convention(**config["convention"])


def _describe_convention(config: Mapping[str, Any]) -> str:
    """Caption text for the pruning size convention of an experiment config."""
    convention = _convention(config)
    return f"kept values at {convention.base_bits} bits, mask encoding ``{escape_tex(convention.mask_encoding)}''"


def _capitalized(name: str) -> str:
    return escape_tex(name[:1].upper() + name[1:])  # "gaussian" -> "Gaussian", "student-t" -> "Student-t"


def synthetic_formats(rng: np.random.Generator) -> pd.DataFrame:
    """A small stand-in for :func:`theory.study.format_sqnr_table` (same columns, made-up values)."""
    rows = []
    for bits in BITS:
        rows.append(("int", f"int{bits}", "quantization", bits, float(bits), np.nan, 6.02 * bits - 4.3, 0.0,
                     0.4 * bits))  # fmt: skip
        rows.append(("int-asym", f"int{bits}_asym", "quantization", bits, float(bits), np.nan, 6.02 * bits - 4.4,
                     0.0, 0.5))  # fmt: skip
    formats = {"fp8_e4m3": (8, 8.0, 31.5), "fp8_e5m2": (8, 8.0, 25.6), "fp4_e2m1": (4, 4.0, 19.0),
               "nf4": (4, 4.127, 20.7), "mxfp4": (4, 4.25, 18.8), "mxint8": (8, 8.25, 41.7),
               "mxfp8_e4m3": (8, 8.25, 30.6),
               "ternary": (1.585, 1.585, 5.8)}
    for name, (bits, size, sqnr) in formats.items():
        rows.append((name, name, "quantization", bits, size, np.nan, sqnr + rng.normal(0, 0.05), 0.01, np.nan))
    for size in sorted({row[4] for row in rows}):
        rows.append(("magnitude", "magnitude", "pruning", size, size, 1 - size / 16, 1.5 + 1.2 * size, 0.0,
                     np.nan))  # fmt: skip
    columns = ["method", "format", "family", "bits", "bits_per_weight", "sparsity", "sqnr_db", "sqnr_se_db",
               "clip_sigma"]
    frame = pd.DataFrame(rows, columns=columns).assign(distribution="gaussian", convention="{}")
    return frame[FORMAT_COLUMNS]


def synthetic_kurtosis(rng: np.random.Generator, truncate: float | None, clip_rule: str) -> pd.DataFrame:
    """A small stand-in for :func:`theory.study.kurtosis_bits_table` (same columns, made-up values)."""
    rows = []
    for kurtosis in np.geomspace(3.5, 30, 5):
        for bits in (2, 4, 6, 8):
            quant_db = 6.02 * bits - 4.3 - 2.0 * np.log(kurtosis / 3)
            prune_db = 3.0 + 2.5 * np.log(kurtosis / 3) + 0.5 * (16 - bits) ** 0.2 + rng.normal(0, 0.05)
            rows.append((kurtosis, bits, float(bits), 1 - bits / 16, quant_db, prune_db))
    frame = pd.DataFrame(
        rows, columns=["kurtosis", "bits", "bits_per_weight", "sparsity", "quant_sqnr_db", "prune_sqnr_db"]
    )
    frame["diff_db"] = frame["quant_sqnr_db"] - frame["prune_sqnr_db"]
    frame["pruning_wins"] = frame["diff_db"] < 0
    frame = frame.assign(distribution="student-t", clip_sigma=3.0, convention="{}", grid="signed",
                         clip_rule=clip_rule, prune_bits_per_weight=frame["bits_per_weight"],
                         kurtosis_parameter=frame["kurtosis"],
                         truncate_sigma=np.nan if truncate is None else truncate)  # fmt: skip
    return frame[[*COMPARISON_COLUMNS, "kurtosis_parameter", "truncate_sigma"]]


@experiment(
    FORMATS, config={"distribution": "gaussian", "convention": PAPER_CONVENTION.as_dict()},
    synthetic=synthetic_formats,
)
def theory_formats(config: Mapping[str, Any], context: ExperimentContext) -> pd.DataFrame:
    """SQNR of every format and of magnitude pruning on one distribution (``theory.study``)."""

    return format_sqnr_table(config["distribution"], convention=_convention(config), seed=context.seed)


def _kurtosis_config(truncate: float | None, clip_rule: str) -> dict[str, Any]:
    return {"kurtoses": KURTOSES, "bits": BITS, "convention": PAPER_CONVENTION.as_dict(), "truncate": truncate,
            "clip_rule": clip_rule}


@experiment(KURTOSIS_MSE, config=_kurtosis_config(None, "mse"),
            synthetic=partial(synthetic_kurtosis, truncate=None, clip_rule="mse"))
@experiment(KURTOSIS_RANGE, config=_kurtosis_config(TRUNCATE_SIGMA, "range"),
            synthetic=partial(synthetic_kurtosis, truncate=TRUNCATE_SIGMA, clip_rule="range"))
def theory_kurtosis_bits(config: Mapping[str, Any], context: ExperimentContext) -> pd.DataFrame:
    """SQNR(INT-b) − SQNR(magnitude pruning) over a kurtosis × bits grid of Student-t laws (``theory.study``)."""

    return kurtosis_bits_table(
        config["kurtoses"], config["bits"], convention=_convention(config), truncate=config["truncate"],
        clip_rule=config["clip_rule"],
    )


def _formats_caption(tables: Tables, facts: Mapping[str, Any]) -> str:
    frame = tables[FORMATS]
    config = facts["protocol"][FORMATS]
    quantization = frame[frame["family"] == "quantization"]
    labels = [method_style(name).label for name in method_order(quantization["method"].map(series))]
    bits = frame.loc[frame["method"].map(series) == INT_SERIES, "bits"]
    return (
        f"Analytic SQNR of a {_capitalized(config['distribution'])} weight distribution under "
        f"{', '.join(labels)} ($b = {bits.min():.0f}\\ldots{bits.max():.0f}$ for INT), against magnitude "
        f"pruning at equal size ({_describe_convention(config)}). Sizes include scales and other format "
        "overheads; block formats are Monte Carlo (error bars: one standard error). Theory only, no model."
    )


def _plot_series(ax: Axes, name: str, rows: pd.DataFrame, label_side: int) -> None:
    """One series: a line when it has one point per size, else markers labelled with the format name
    (e.g. FP8 E4M3 and E5M2 share a size), labels on the left (``label_side`` -1) or right (+1)."""
    rows = rows.sort_values("bits_per_weight")
    errors = rows["sqnr_se_db"].fillna(0.0).to_numpy(float)
    kwargs = line_kwargs(name, rows["family"].iloc[0])
    as_line = len(rows) > 1 and rows["bits_per_weight"].is_unique
    if not as_line:
        kwargs["linestyle"] = "none"
    ax.errorbar(rows["bits_per_weight"].to_numpy(float), rows["sqnr_db"].to_numpy(float),
                yerr=errors if errors.any() else None, capsize=2, **kwargs)
    if not as_line and len(rows) > 1:
        for method, size, sqnr in rows[["method", "bits_per_weight", "sqnr_db"]].itertuples(index=False):
            ax.annotate(method.upper().replace("_", " "), (size, sqnr), xytext=(5 * label_side, -2),
                        textcoords="offset points", fontsize=6, color=kwargs["color"],
                        ha="left" if label_side > 0 else "right")


@figure("gaussian_sqnr_vs_bits", needs=(FORMATS,), caption=_formats_caption, section=SECTION)
def gaussian_sqnr_vs_bits(tables: Tables) -> Figure:
    """SQNR [dB] vs bits per weight: one series per format family (solid) and magnitude pruning (dashed)."""
    frame = tables[FORMATS].assign(series=lambda f: f["method"].map(series))
    fig, ax = new_figure(height_ratio=0.7)
    labelled = 0
    for name in method_order(frame["series"]):
        rows = frame[frame["series"] == name]
        _plot_series(ax, name, rows, label_side=-1 if labelled % 2 == 0 else 1)
        labelled += int(not rows["bits_per_weight"].is_unique)
    left, right = ax.get_xlim()
    ax.set_xlim(left, right + 0.12 * (right - left))  # room for the labels right of the largest formats
    ax.set_xlabel("Size [bits per weight, incl. overhead]")
    ax.set_ylabel("SQNR [dB]")
    method_legend(ax)
    return fig


def _panel_setting(frame: pd.DataFrame) -> tuple[str, str]:
    """(law, quantizer range) of a kurtosis table, read from its ``truncate_sigma`` and ``clip_rule``."""
    truncate = frame["truncate_sigma"].iloc[0]
    law = "Student-t" if pd.isna(truncate) else f"Student-t truncated at $\\pm{truncate:g}\\sigma$"
    clip = "MSE-optimal clipping" if frame["clip_rule"].iloc[0] == "mse" else "range = max $|w|$, no clipping"
    return law, clip


def _kurtosis_caption(tables: Tables, facts: Mapping[str, Any]) -> str:
    panels = []
    for letter, name in zip("ab", (KURTOSIS_MSE, KURTOSIS_RANGE), strict=True):
        frame = tables[name]
        law, clip = _panel_setting(frame)
        panels.append(
            f"({letter}) {law}, {clip}, kurtosis {frame['kurtosis'].min():.1f}--{frame['kurtosis'].max():.1f}: "
            f"pruning wins at {int(frame['pruning_wins'].sum())} of {len(frame)} grid points"
        )
    config = facts["protocol"][KURTOSIS_MSE]
    return (
        "SQNR(INT-$b$) $-$ SQNR(magnitude pruning) at equal size over kurtosis and bits "
        f"({_describe_convention(config)}). Hatched, bounded by the 0\\,dB contour: pruning wins. "
        + "; ".join(panels) + ". Theory only, no model."
    )


def _difference_map(ax: Axes, frame: pd.DataFrame, norm: Normalize) -> QuadContourSet:
    """Filled contours of diff_db over kurtosis (log x) × bits per weight, hatched where it is below 0 dB."""
    grid = frame.pivot_table(index="bits_per_weight", columns="kurtosis", values="diff_db")
    kurtoses, sizes, diff = grid.columns.to_numpy(float), grid.index.to_numpy(float), grid.to_numpy()
    filled = ax.contourf(kurtoses, sizes, diff, levels=np.linspace(norm.vmin, norm.vmax, 21), cmap=DIVERGING_CMAP,
                         norm=norm)
    if np.nanmin(diff) < 0:
        ax.contourf(kurtoses, sizes, diff, levels=[np.nanmin(diff) - 1.0, 0.0], colors="none",
                    hatches=[PRUNING_WINS_HATCH])
    if np.nanmin(diff) < 0 < np.nanmax(diff):
        ax.contour(kurtoses, sizes, diff, levels=[0.0], colors="black", linewidths=1.2)
    ax.set_xscale("log")
    ax.set_xticks([k for k in KURTOSIS_TICKS if 0.99 * kurtoses.min() <= k <= 1.01 * kurtoses.max()])
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(sizes)
    ax.set_xlabel("Kurtosis (Gaussian = 3)")
    ax.grid(False)
    return filled


@figure("kurtosis_bits_sqnr_difference", needs=(KURTOSIS_MSE, KURTOSIS_RANGE), caption=_kurtosis_caption,
        section=SECTION)
def kurtosis_bits_sqnr_difference(tables: Tables) -> Figure:
    """Two panels of SQNR(quant) − SQNR(prune) [dB] over kurtosis × bits, on one symmetric colour scale."""
    limit = max(float(np.nanmax(np.abs(tables[name]["diff_db"]))) for name in (KURTOSIS_MSE, KURTOSIS_RANGE))
    norm = Normalize(-(limit or 1.0), limit or 1.0)
    fig, axes = new_figure(ncols=2, height_ratio=0.45)
    for ax, name in zip(axes, (KURTOSIS_MSE, KURTOSIS_RANGE), strict=True):
        filled = _difference_map(ax, tables[name], norm)
    axes[0].set_ylabel("Size [bits per weight]")
    for ax, letter, name in zip(axes, "ab", (KURTOSIS_MSE, KURTOSIS_RANGE), strict=True):
        law, clip = _panel_setting(tables[name])
        ax.set_title(f"({letter}) {law},\n{clip}", loc="left", fontsize="small")
    fig.colorbar(filled, ax=list(axes), ticks=MaxNLocator(7)).set_label("SQNR(quant) − SQNR(prune) [dB]")
    wins = Patch(facecolor="none", edgecolor="black", hatch=PRUNING_WINS_HATCH, label="pruning wins")
    fig.legend(handles=[wins], loc="outside lower center", frameon=False)
    return fig


def _formats_table_caption(tables: Tables, facts: Mapping[str, Any]) -> str:
    config = facts["protocol"][FORMATS]
    return (
        f"INT-$b$ quantization (signed grid, MSE-optimal per-tensor scale) vs magnitude pruning of a "
        f"{_capitalized(config['distribution'])} distribution at equal size ({_describe_convention(config)}): "
        "analytic SQNR in dB."
    )


@table("sqnr_int_vs_pruning_gaussian", needs=(FORMATS,), caption=_formats_table_caption, section=SECTION)
def sqnr_int_vs_pruning_gaussian(tables: Tables) -> Styler:
    """Per size: INT-b SQNR, the equal-size sparsity, pruning SQNR and their difference (all dB)."""
    frame = tables[FORMATS].assign(bits_per_weight=lambda f: f["bits_per_weight"].round(6))
    quant = frame[frame["method"].map(series) == INT_SERIES][["bits_per_weight", "bits", "sqnr_db"]]
    prune = frame[frame["family"] == "pruning"][["bits_per_weight", "sparsity", "sqnr_db"]]
    merged = quant.merge(prune, on="bits_per_weight", suffixes=("_quant", "_prune")).sort_values("bits_per_weight")
    merged["bits"] = merged["bits"].astype(int)
    merged["sparsity"] = 100 * merged["sparsity"]
    merged["difference"] = merged["sqnr_db_quant"] - merged["sqnr_db_prune"]
    labels = {
        "bits": "$b$", "bits_per_weight": "Bits per weight", "sqnr_db_quant": "INT-$b$ SQNR [dB]",
        "sparsity": "Sparsity [\\%]", "sqnr_db_prune": "Pruning SQNR [dB]", "difference": "Difference [dB]",
    }
    return thesis_table(merged, labels, precision=2)


def pruning_wins(frame: pd.DataFrame) -> tuple[int, int]:
    """(grid points where pruning has the higher SQNR, grid points) of a kurtosis × bits table."""
    return int(frame["pruning_wins"].astype(bool).sum()), len(frame)


@prose(SECTION, needs=(KURTOSIS_MSE, KURTOSIS_RANGE))
def theory_prose(tables: Tables) -> str:
    """The section's opening paragraph: on which laws pruning can beat quantization at equal size, with the
    quantizer clipped MSE-optimally and with its range set to the largest weight, and the threats to validity."""
    clipped, ranged = tables[KURTOSIS_MSE], tables[KURTOSIS_RANGE]
    (won, points), (won_ranged, points_ranged) = pruning_wins(clipped), pruning_wins(ranged)
    return (
        "Before any model, the question has an analytic form: at the same number of bits per weight, does "
        "rounding every weight to a grid of $2^b$ levels keep more of a weight distribution than keeping its "
        "largest weights and dropping the rest? On unit-variance Student-t laws of kurtosis "
        f"{clipped['kurtosis'].min():.1f} to {clipped['kurtosis'].max():.1f} at {int(clipped['bits'].min())} to "
        f"{int(clipped['bits'].max())} bits per weight, pruning has the higher SQNR at {won} of {points} grid "
        "points when the quantizer clips its range at the mean-squared-error optimum, and at "
        f"{won_ranged} of {points_ranged} when its range must reach the largest weight of the law truncated at "
        f"{ranged['truncate_sigma'].max():g} standard deviations. Pruning can win only where the tails are heavy "
        "and the quantizer is made to cover them. Threats to validity: these are distributions, not trained "
        "weights (the next sections measure real tensors and layers); following Kuzmin et al., the pruning mask "
        "is free and the quantizer's scale is not counted, which favours pruning and quantization respectively."
    )
