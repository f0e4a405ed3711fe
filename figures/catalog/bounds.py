"""Per-layer bounds: exact optima and certified SDP bounds of the chunk problems on real layers, vs heuristics.

Kuzmin et al. (NeurIPS 2023, Sec. 4, Fig. 4) solve the per-layer quantization and pruning problems exactly on
small chunks and bound them with SDPs. Here (:func:`measure.bounds.bounds_for_model`): for each sublayer kind in
``roles`` of the blocks at ``positions`` and b = 2, 3, 4, on every chunk of ``rows`` seeded random output rows,
the exact quantization optimum, the Park–Boyd bound, RTN and GPTQ against the exact pruning optimum (equal size),
the perspective bound, and magnitude, Wanda and SparseGPT, as the energy-weighted output SQNR of the sampled
rows with a 95% bootstrap interval over rows; and the Gaussian rate–distortion reference of each whole layer.
The SDP bounds run only at ``sdp_bits`` on the ``sdp_roles`` layers: the two SDPs of a chunk of 16 take about
0.13–0.17 s, so 16 rows × 36 chunks of one layer take 75–100 s per b on 2 loaded CPU cores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pandas.io.formats.style import Styler

from figures.answers import prose
from figures.experiments import ExperimentContext, experiment
from figures.registry import Caption, Tables, escape_tex, figure, table
from figures.style import FAMILY_LINESTYLE, OKABE_ITO, new_figure, thesis_table
from measure.bounds import BOOTSTRAP_RESAMPLES, INTERVAL_LEVEL, REFERENCE, bounds_for_model
from measure.studies.layers import sweep_layers

SECTION = "Exact per-layer bounds"
SWEEP = "layer_bounds_sweep"
POSITIONS = ("first", "middle", "last")
SWEEP_CONFIG = {
    "positions": ["middle"], "roles": ["q", "o", "up", "down"], "bits": [2, 3, 4], "sdp_bits": [],
    "sdp_roles": ["q"], "opt_dim": 16, "rows": 16, "max_chunks": None, "sequences": 4, "sequence_length": 256,
    "time_limit": 2.0,
}  # fmt: skip
"""Every chunk of 16 rows of four layers of the middle block, one per distinct input (q shares its input with
k and v, up with gate), sized for the about 2 minutes this sweep takes on 2 loaded CPU cores: chunks of 16 (the
exact solves of chunks of 32 take 5–15 s per row and b) and no SDP bounds (``sdp_bits`` empty): on one layer
at one b they would add about 100 s. Set ``sdp_bits`` (and ``sdp_roles``) to draw them."""
SERIES = (
    ("quantization", "exact", "sqnr_db", "INT-$b$ exact optimum", "black", "o"),
    ("quantization", "park_boyd", "sqnr_upper_db", "INT-$b$ SDP bound (Park–Boyd)", "reddish_purple", "v"),
    ("quantization", "gptq", "sqnr_db", "GPTQ", "blue", "D"),
    ("quantization", "rtn", "sqnr_db", "RTN", "sky_blue", "s"),
    ("pruning", "exact", "sqnr_db", "pruning exact optimum", "black", "P"),
    ("pruning", "perspective", "sqnr_upper_db", "pruning SDP bound (perspective)", "reddish_purple", "v"),
    ("pruning", "sparsegpt", "sqnr_db", "SparseGPT", "vermillion", "D"),
    ("pruning", "wanda", "sqnr_db", "Wanda", "bluish_green", "^"),
    ("pruning", "magnitude", "sqnr_db", "magnitude", "orange", "s"),
)
"""(family, method, column, label, Okabe–Ito colour, marker) of each line of the figure; bounds are drawn at their
SQNR upper bound, quantization solid and pruning dashed; error bars are the ``column``'s ``_low95``/``_high95``."""
REFERENCE_SERIES = ("sqnr_db", "Gaussian RD reference (not a bound)", "black")
"""(column, label, colour) of the Gaussian rate–distortion reference (:data:`measure.bounds.REFERENCE`), dotted.
The figure imports :mod:`measure.bounds` (and with it cvxpy) only when it draws."""
GAPS = {
    "quant_exact_db": ("quantization", "exact", "sqnr_db"),
    "gptq_gap_db": ("quantization", "gptq", "sqnr_db"),
    "rtn_gap_db": ("quantization", "rtn", "sqnr_db"),
    "sdp_gap_db": ("quantization", "park_boyd", "sqnr_upper_db"),
    "prune_exact_db": ("pruning", "exact", "sqnr_db"),
    "sparsegpt_gap_db": ("pruning", "sparsegpt", "sqnr_db"),
    "sparsegpt_refit_gap_db": ("pruning", "sparsegpt+refit", "sqnr_db"),
    "wanda_gap_db": ("pruning", "wanda", "sqnr_db"),
    "magnitude_gap_db": ("pruning", "magnitude", "sqnr_db"),
    "perspective_gap_db": ("pruning", "perspective", "sqnr_upper_db"),
}
"""Table column -> (family, method, SQNR column); a ``_gap_db`` column is |that − the family's exact optimum|."""
PANEL_COLUMNS = 2
DODGE = 0.025
"""Horizontal offset (bits) between neighbouring series, so that their error bars do not hide each other."""


def _synthetic_methods(rng: np.random.Generator, bits: int) -> list[tuple[str, str, str, float, float]]:
    """(family, method, kind, sqnr_db, sqnr_upper_db) of every method at ``bits``, made up."""
    quant, prune = 6.0 * bits - 3 + rng.normal(0, 0.3), 2.0 + 1.5 * bits + rng.normal(0, 0.3)
    methods = [("quantization", "exact", "exact", quant, quant),
               ("quantization", "park_boyd", "bound", quant - 0.4, quant + 1.0),
               ("quantization", "gptq", "heuristic", quant - 0.5, np.nan),
               ("quantization", "rtn", "heuristic", quant - 2.0, np.nan),
               ("pruning", "exact", "exact", prune, prune),
               ("pruning", "perspective", "bound", prune - 0.2, prune + 0.8)]
    methods += [("pruning", name, "heuristic", prune - drop, np.nan) for name, drop in
                (("magnitude", 3.0), ("wanda", 2.0), ("sparsegpt", 1.0), ("magnitude+refit", 1.0),
                 ("wanda+refit", 0.7), ("sparsegpt+refit", 0.3))]

    return [*methods, (*REFERENCE, "reference", 6.02 * bits + 1.0, np.nan)]


def synthetic_sweep(rng: np.random.Generator) -> pd.DataFrame:
    """A small stand-in for :func:`measure.bounds.bounds_for_model` (same columns and dtypes, made-up values)."""
    rows = []
    for block in (0, 1):
        for role in ("q", "down"):
            for bits in SWEEP_CONFIG["bits"]:
                for family, method, kind, sqnr, upper in _synthetic_methods(rng, bits):
                    measured, bounded = kind != "reference", kind in ("exact", "bound")
                    rows.append({
                        "family": family, "method": method, "kind": kind, "sqnr_db": sqnr,
                        "sqnr_db_low95": sqnr - 0.5 if measured else np.nan,
                        "sqnr_db_high95": sqnr + 0.4 if measured else np.nan, "sqnr_upper_db": upper,
                        "sqnr_upper_db_low95": upper - 0.5 if bounded else np.nan,
                        "sqnr_upper_db_high95": upper + 0.4 if bounded else np.nan,
                        "status": {"exact": "optimal", "reference": "reference"}.get(kind, kind),
                        "optimal_chunks": 4 if kind == "exact" else 0, "chunks": 4 if measured else 0,
                        "rows": 2 if measured else 64, "gap": 0.0 if bounded else np.nan,
                        "layer": f"model.layers.{block}.{role}", "block": block, "role": role, "bits": bits,
                    })  # fmt: skip
    return pd.DataFrame(rows).astype({"family": "str", "method": "str", "kind": "str", "status": "str",
                                      "layer": "str", "role": "str"})  # fmt: skip


@experiment(SWEEP, config=SWEEP_CONFIG, synthetic=synthetic_sweep, needs_model=True)  # fmt: skip
def layer_bounds_sweep(config: Mapping[str, Any], context: ExperimentContext) -> pd.DataFrame:
    """:func:`measure.bounds.bounds_for_model` over the ``roles`` of the blocks at ``positions`` (SDPs at
    ``sdp_bits`` on the ``sdp_roles`` layers), without its ``seconds`` column: solver times vary from run to run,
    and experiment tables must be byte-identical across runs (the total runtime is in the provenance;
    ``pvq bounds`` reports per-method times)."""

    loaded = context.model
    layers = sweep_layers(loaded.model, config["positions"], config["roles"])
    return bounds_for_model(
        loaded, [name for name, _ in layers], config["bits"], opt_dim=config["opt_dim"], rows=config["rows"],
        max_chunks=config["max_chunks"], sdp_bits=config["sdp_bits"], sequences=config["sequences"],
        sequence_length=config["sequence_length"], time_limit=config["time_limit"], seed=context.seed,
        sdp_layers=[name for name, role in layers if role in config["sdp_roles"]],
    ).drop(columns="seconds")


def _chunks_text(config: Mapping[str, Any]) -> str:
    """"every chunk" or "the first N chunks" of ``opt_dim`` inputs, as the config says."""
    count = config["max_chunks"]
    which = "every chunk" if count is None else f"the first {count} chunk(s)"
    return f"{which} of {config['opt_dim']} inputs"


_SQNR_TEXT = (
    "Output SQNR [dB] $= 10\\log_{10}(\\sum_r w_r^\\top H w_r / \\sum_r \\sum_C e_{rC})$: the sampled rows' full "
    "output energy over their summed chunk errors $e_{rC}$, energy-weighted over rows (the level of a whole "
    "layer's $\\mathrm{tr}(W H W^\\top) / \\mathrm{tr}(\\Delta W H \\Delta W^\\top)$)."
)


def _sdp_text(frame: pd.DataFrame, config: Mapping[str, Any]) -> str:
    """Caption sentence: where the SDP bounds were computed, or that none were, and why."""
    layers = frame.loc[frame["kind"] == "bound", "layer"].unique()
    cost = (f"SDPs on every chunk of {config['rows']} rows are too slow for this sweep; "
            "\\texttt{pvq bounds} computes them")  # fmt: skip
    if len(layers) == 0:
        return f"No SDP bounds in this sweep ({cost})."
    bits = ", ".join(map(str, sorted(frame.loc[frame["kind"] == "bound", "bits"].unique())))
    return f"SDP bounds only at $b \\in \\{{{bits}\\}}$ on {', '.join(map(escape_tex, layers))} ({cost})."


def _protocol(tables: Tables, facts: Mapping[str, Any]) -> str:
    """Caption text: what was solved, on which data, what the SQNR and its interval are, and the grid detection."""

    config, frame = facts["protocol"][SWEEP], tables[SWEEP]
    exact = frame[frame["kind"] == "exact"]
    grid = facts["grid_detection"]
    verdict = grid.get("verdict", "") if isinstance(grid, Mapping) else str(grid)
    return (
        f"{escape_tex(facts['model_id'])}, {frame['layer'].nunique()} layers (blocks "
        f"{', '.join(map(str, sorted(frame['block'].unique())))}; {', '.join(map(escape_tex, config['roles']))}); "
        f"per layer {config['rows']} seeded random rows $\\times$ {_chunks_text(config)}, each chunk compressed "
        f"alone with the rest of its row unchanged. {_SQNR_TEXT} $H$: Gram of {config['sequences']}$\\times$"
        f"{config['sequence_length']} calibration tokens plus 1\\% damping. Error bars: "
        f"{100 * INTERVAL_LEVEL:g}\\% percentile bootstrap over rows ({BOOTSTRAP_RESAMPLES} resamples). "
        f"{_sdp_text(frame, config)} Exact solves limited to {config['time_limit']:g}~s per chunk "
        f"({int(exact['optimal_chunks'].sum())} of {int(exact['chunks'].sum())} proven optimal). Pruning keeps "
        f"$k = n\\,b/16$ weights (free mask), refit box $2\\max|w|$. Grid detection: {escape_tex(verdict)}."
    )


def _with_protocol(text: str) -> Caption:
    """The caption ``text`` followed by the protocol of the sweep (:func:`_protocol`)."""

    def caption(tables: Tables, facts: Mapping[str, Any]) -> str:
        return f"{text} {_protocol(tables, facts)}"

    return caption


_figure_caption = _with_protocol(
    "Per-layer compression problems, one panel per layer: output SQNR [dB] of the exact optima, the SDP bounds "
    "where computed (drawn at their certified SQNR upper bound) and the heuristics, for quantization (solid) and "
    "pruning at equal size (dashed), vs bits per weight (INT-$b$: $b$ bits per weight, its per-chunk scale not "
    "counted). "
    "Dotted: the Gaussian rate--distortion reference of the whole layer (all rows, same damped $H$), "
    "$10\\log_{10}(\\sum_j \\mu_j / D)$ [dB]: $\\mu_j = \\lambda_j s_j^2$ with $H = V \\Lambda V^\\top$ and "
    "$s_j^2$ the mean over rows of $(v_j^\\top w)^2$, the variances of independent Gaussian coordinates in the "
    "Gram's eigenbasis ($\\sum_j \\mu_j = \\mathrm{tr}(W H W^\\top)/\\mathrm{rows}$, the mean row output "
    "energy), and $D$ the least mean row output error that reverse water-filling on them (Cover \\& Thomas, "
    "Thm 10.3.3) allows at $b$ bits per weight, every bit counted. It is a reference for Gaussian weights with "
    "those independent coordinates, not a bound on the layer's real weights."
)


def _layer_panels(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, rows) per layer of ``frame``, ordered by block, then as the table lists them (the model's order)."""
    layers = frame.drop_duplicates("layer").sort_values("block", kind="stable")
    return [(f"block {row.block} {row.role}", frame[frame["layer"] == row.layer]) for row in layers.itertuples()]


def _draw_series(ax: Any, rows: pd.DataFrame, series: tuple[str, str, str, str, str, str], offset: float) -> None:
    """One method of :data:`SERIES` on ``ax``: ``column`` vs bits (shifted by ``offset``) with its 95% interval
    as error bars."""
    family, method, column, label, color, marker = series
    points = rows[(rows["family"] == family) & (rows["method"] == method)].dropna(subset=[column])
    if points.empty:
        return
    points = points.sort_values("bits")
    values = points[column].to_numpy(float)
    below = values - points[f"{column}_low95"].to_numpy(float)
    above = points[f"{column}_high95"].to_numpy(float) - values
    ax.errorbar(points["bits"].to_numpy(float) + offset, values, yerr=np.vstack([below, above]),
                color=OKABE_ITO[color], marker=marker, linestyle=FAMILY_LINESTYLE[family], capsize=2,
                label=label)  # fmt: skip


@figure("per_layer_bounds", needs=(SWEEP,), caption=_figure_caption, section=SECTION)
def per_layer_bounds(tables: Tables) -> Figure:
    """Output SQNR [dB] vs bits per layer: one error-bar line per (family, method) of :data:`SERIES` and the
    Gaussian RD reference dotted (:data:`REFERENCE_SERIES`); one shared legend below the panels."""
    frame = tables[SWEEP]
    panels = _layer_panels(frame)
    columns = min(PANEL_COLUMNS, len(panels))
    count = math.ceil(len(panels) / columns)
    fig, axes = new_figure(nrows=count, ncols=columns, height_ratio=0.42 * count + 0.25)
    axes = np.atleast_1d(axes).ravel()

    (family, method), (column, label, color) = REFERENCE, REFERENCE_SERIES
    for index, (ax, (title, rows)) in enumerate(zip(axes, panels, strict=False)):
        for number, series in enumerate(SERIES):
            _draw_series(ax, rows, series, DODGE * (number - (len(SERIES) - 1) / 2))
        reference = rows[(rows["family"] == family) & (rows["method"] == method)].sort_values("bits")
        ax.plot(reference["bits"].to_numpy(float), reference[column].to_numpy(float), color=OKABE_ITO[color],
                linestyle=":", label=label)  # fmt: skip
        ax.set_title(title)
        ax.set_xticks(sorted(frame["bits"].unique()))
        ax.set_xlabel("bits per weight")
        if index % columns == 0:
            ax.set_ylabel("output SQNR [dB]")
    for ax in axes[len(panels):]:
        fig.delaxes(ax)
    legend = {label: handle for ax in axes[: len(panels)] for handle, label in zip(*ax.get_legend_handles_labels(),
                                                                                   strict=True)}  # fmt: skip
    fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncols=3, frameon=False,
               fontsize="small")  # fmt: skip
    return fig


def bound_gaps_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (layer, b), layers in the sweep's order of roles (the figure's): the exact optima (output SQNR, dB),
    each heuristic's shortfall and each SDP bound's excess over the exact optimum of its family, |method − exact|
    in dB (:data:`GAPS`), the INT − pruning difference of the exact optima and the Gaussian RD reference minus the
    INT exact optimum (signed, dB)."""

    values = frame.pivot_table(index=["block", "role", "bits"], columns=["family", "method"], aggfunc="first",
                               values=["sqnr_db", "sqnr_upper_db"], dropna=False)  # fmt: skip
    gaps = pd.DataFrame(index=values.index)
    for name, (family, method, column) in GAPS.items():
        series = values.get((column, family, method), pd.Series(np.nan, index=values.index))
        exact = values[("sqnr_db", family, "exact")]
        gaps[name] = series if name.endswith("_exact_db") else (series - exact).abs()
    gaps["quant_minus_prune_db"] = gaps["quant_exact_db"] - gaps["prune_exact_db"]
    gaps["reference_minus_quant_db"] = values[("sqnr_db", *REFERENCE)] - gaps["quant_exact_db"]
    gaps = gaps.reset_index()
    gaps["layer"] = gaps["block"].astype(str) + "." + gaps["role"].astype(str)
    order = {role: rank for rank, role in enumerate(frame["role"].unique())}  # the sweep's, as in the figure
    return gaps.sort_values(["block", "role", "bits"], key=lambda c: c.map(order) if c.name == "role" else c,
                            ignore_index=True)  # fmt: skip


_gaps_caption = _with_protocol(
    "Bound gaps per layer and $b$, in dB of output SQNR (as in the figure: sampled rows' output energy over "
    "their summed chunk errors): exact optima, how far each heuristic falls below the exact optimum of its "
    "family, how far the SDP bound lies above it (a certified bound on the optimum; -- where not computed), "
    "INT $-$ pruning exact optima, and the Gaussian rate--distortion reference of the whole layer minus the "
    "INT exact optimum (RD $-$ INT; a reference for Gaussian weights, not a bound)."
)


@table("bound_gaps", needs=(SWEEP,), caption=_gaps_caption, section=SECTION)
def bound_gaps(tables: Tables) -> Styler:
    """Per (layer, b): exact optima and the gaps of :func:`bound_gaps_frame`."""
    return thesis_table(bound_gaps_frame(tables[SWEEP]), {
        "layer": "layer", "bits": "$b$", "quant_exact_db": "INT exact", "gptq_gap_db": "GPTQ",
        "rtn_gap_db": "RTN", "sdp_gap_db": "SDP", "prune_exact_db": "prune exact", "sparsegpt_gap_db": "SparseGPT",
        "sparsegpt_refit_gap_db": "+refit", "wanda_gap_db": "Wanda", "magnitude_gap_db": "mag.",
        "perspective_gap_db": "persp.", "quant_minus_prune_db": "INT $-$ prune",
        "reference_minus_quant_db": "RD $-$ INT",
    })  # fmt: skip


def exact_differences(frame: pd.DataFrame) -> pd.Series:
    """Per (layer, b): the exact quantization optimum minus the exact pruning optimum, output SQNR in dB."""
    exact = frame[frame["kind"] == "exact"]
    exact = exact.pivot_table(index=["layer", "bits"], columns="family", values="sqnr_db")
    return exact["quantization"] - exact["pruning"]


def median_shortfall(frame: pd.DataFrame, family: str, method: str) -> float:
    """Median over (layer, b) of how far ``method`` falls below the exact optimum of ``family``, dB."""
    rows = frame[frame["family"] == family]
    rows = rows.pivot_table(index=["layer", "bits"], columns="method", values="sqnr_db")
    if method not in rows or "exact" not in rows:
        return math.nan
    return float((rows["exact"] - rows[method]).median())


@prose(SECTION, needs=(SWEEP,))
def bounds_prose(tables: Tables) -> str:
    """The section's opening paragraph: the per-layer question answered by exact optima instead of heuristics, how
    close GPTQ and SparseGPT come to them, and the threats to validity."""
    frame = tables[SWEEP]
    differences = exact_differences(frame)
    exact = frame[frame["kind"] == "exact"]
    medians = "; ".join(f"{rows.median():+.1f} dB at {bits} bits"
                        for bits, rows in differences.groupby(level="bits"))  # fmt: skip
    return (
        "Per layer, with the layer's inputs weighting the error, the question can be settled by exact optima "
        f"rather than by heuristics: on {frame['layer'].nunique()} layers the best pruning mask and weights beat "
        f"the best quantization grid assignment at {int((differences < 0).sum())} of {len(differences)} (layer, "
        f"width) pairs, and the median advantage of quantization in output SQNR is {medians}. GPTQ falls a median "
        f"{median_shortfall(frame, 'quantization', 'gptq'):.1f} dB short of the quantization optimum and "
        f"SparseGPT {median_shortfall(frame, 'pruning', 'sparsegpt'):.1f} dB short of the pruning optimum. "
        "Threats to validity: the exact problems are solved on chunks of a few inputs with the rest of each row "
        "unchanged, on a random sample of rows (the bars are bootstrap intervals over rows), within a time limit "
        f"that proved {int(exact['optimal_chunks'].sum())} of {int(exact['chunks'].sum())} chunk solves optimal; "
        "a few layers of one block of one model."
    )
