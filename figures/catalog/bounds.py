"""Per-layer bounds: exact optima and certified SDP bounds of the chunk problems on real layers, vs heuristics.

Kuzmin et al. (NeurIPS 2023, Sec. 4, Fig. 4) solve the per-layer quantization and pruning problems exactly on
small chunks and bound them with SDPs. Here (:func:`measure.bounds.bounds_for_model`): for each sublayer kind
(q, k, v, o, gate, up, down) of the first, middle and last block of the model and b = 2, 3, 4, the exact
quantization optimum, the Park–Boyd bound, RTN and GPTQ against the exact pruning optimum (equal size), the
perspective bound, and magnitude, Wanda and SparseGPT, as output SQNR over the chunks measured.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pandas.io.formats.style import Styler

from figures.experiments import ExperimentContext, experiment
from figures.registry import Caption, Tables, escape_tex, figure, table
from figures.style import FAMILY_LINESTYLE, OKABE_ITO, method_legend, new_figure, thesis_table

SECTION = "Exact per-layer bounds"
SWEEP = "layer_bounds_sweep"
POSITIONS = ("first", "middle", "last")
SWEEP_CONFIG = {
    "positions": list(POSITIONS), "roles": ["q", "k", "v", "o", "gate", "up", "down"], "bits": [2, 3, 4],
    "sdp_bits": [4], "opt_dim": 32, "rows": 2, "max_chunks": 1, "sequences": 4, "sequence_length": 256,
    "time_limit": 2.0,
}  # fmt: skip
"""Sized for the 4-minute budget of this sweep on 2 loaded CPU cores (the SDPs dominate: about 1.3 s each)."""
SERIES = (
    ("quantization", "exact", "sqnr_db", "INT-$b$ exact optimum", "black", "o"),
    ("quantization", "park_boyd", "sqnr_upper_db", "INT-$b$ SDP bound (Park–Boyd)", "reddish_purple", "v"),
    ("quantization", "gptq", "sqnr_db", "GPTQ", "blue", "D"),
    ("quantization", "rtn", "sqnr_db", "RTN", "sky_blue", "s"),
    ("pruning", "exact", "sqnr_db", "pruning exact optimum", "black", "o"),
    ("pruning", "perspective", "sqnr_upper_db", "pruning SDP bound (perspective)", "reddish_purple", "v"),
    ("pruning", "sparsegpt", "sqnr_db", "SparseGPT", "vermillion", "D"),
    ("pruning", "wanda", "sqnr_db", "Wanda", "bluish_green", "^"),
    ("pruning", "magnitude", "sqnr_db", "magnitude", "orange", "s"),
)
"""(family, method, column, label, Okabe–Ito colour, marker) of each line of the figure; bounds are drawn at their
SQNR upper bound, quantization solid and pruning dashed."""
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


def sweep_blocks(count: int, positions: list[str]) -> list[int]:
    """Block indices of ``positions`` ("first", "middle", "last") in a model of ``count`` blocks."""
    where = {"first": 0, "middle": (count - 1) // 2, "last": count - 1}
    return sorted({where[position] for position in positions})


def synthetic_sweep(rng: np.random.Generator) -> pd.DataFrame:
    """A small stand-in for :func:`measure.bounds.bounds_for_model` (same columns, made-up values)."""
    rows = []
    for block in (0, 1):
        for role in ("q", "down"):
            for bits in SWEEP_CONFIG["bits"]:
                quant, prune = 6.0 * bits - 3 + rng.normal(0, 0.3), 2.0 + 1.5 * bits + rng.normal(0, 0.3)
                methods = [("quantization", "exact", "exact", quant, quant), ("quantization", "park_boyd", "bound",
                           quant - 0.4, quant + 1.0), ("quantization", "gptq", "heuristic", quant - 0.5, np.nan),
                           ("quantization", "rtn", "heuristic", quant - 2.0, np.nan),
                           ("pruning", "exact", "exact", prune, prune + 0.1),
                           ("pruning", "perspective", "bound", prune - 0.2, prune + 0.8)]
                methods += [("pruning", name, "heuristic", prune - drop, np.nan) for name, drop in
                            (("magnitude", 3.0), ("wanda", 2.0), ("sparsegpt", 1.0), ("magnitude+refit", 1.0),
                             ("wanda+refit", 0.7), ("sparsegpt+refit", 0.3))]
                for family, method, kind, sqnr, upper in methods:
                    rows.append({"family": family, "method": method, "kind": kind, "sqnr_db": sqnr,
                                 "sqnr_upper_db": upper, "status": "optimal" if kind == "exact" else kind,
                                 "optimal_chunks": 2 if kind == "exact" else 0, "chunks": 2,
                                 "gap": 0.0 if kind == "exact" else np.nan,
                                 "layer": f"model.layers.{block}.{role}", "block": block, "role": role,
                                 "bits": bits})  # fmt: skip
    return pd.DataFrame(rows)


@experiment(SWEEP, config=SWEEP_CONFIG, synthetic=synthetic_sweep, needs_model=True,
            code=("measure.bounds", "measure.capture", "measure.calibration", "theory"))  # fmt: skip
def layer_bounds_sweep(config: Mapping[str, Any], context: ExperimentContext) -> pd.DataFrame:
    """:func:`measure.bounds.bounds_for_model` over the ``roles`` of the blocks at ``positions``, without its
    ``seconds`` column: solver times vary from run to run, and experiment tables must be byte-identical across
    runs (the total runtime is in the provenance; ``pvq bounds`` reports per-method times)."""
    from measure.architecture import describe
    from measure.bounds import bounds_for_model

    loaded = context.model
    arch = describe(loaded.model)
    names = [ref.name for index in sweep_blocks(len(arch.blocks), config["positions"])
             for ref in arch.blocks[index].linears if ref.role in config["roles"] and ref.expert_index is None]
    return bounds_for_model(
        loaded, names, config["bits"], opt_dim=config["opt_dim"], rows=config["rows"],
        max_chunks=config["max_chunks"], sdp_bits=config["sdp_bits"], sequences=config["sequences"],
        sequence_length=config["sequence_length"], time_limit=config["time_limit"], seed=context.seed,
    ).drop(columns="seconds")


def _protocol(tables: Tables, facts: Mapping[str, Any]) -> str:
    """Caption text: what was solved, on which data, and the grid detection of the model."""
    config, frame = facts["protocol"][SWEEP], tables[SWEEP]
    exact = frame[frame["kind"] == "exact"]
    grid = facts["grid_detection"]
    verdict = grid.get("verdict", "") if isinstance(grid, Mapping) else str(grid)
    return (
        f"{escape_tex(facts['model_id'])}, {frame['layer'].nunique()} layers (blocks "
        f"{', '.join(map(str, sorted(frame['block'].unique())))}; {', '.join(map(escape_tex, config['roles']))}); "
        f"per layer {config['rows']} seeded random rows $\\times$ the first {config['max_chunks']} chunk(s) of "
        f"{config['opt_dim']} inputs, each chunk compressed alone with the rest of its row unchanged; SQNR = "
        f"$10\\log_{{10}}(\\sum$ signal$/\\sum$ error$)$ over those chunks, Gram from {config['sequences']}"
        f"$\\times${config['sequence_length']} calibration tokens (1\\% damping). SDP bounds only at "
        f"$b \\in \\{{{', '.join(map(str, config['sdp_bits']))}\\}}$; exact solves limited to "
        f"{config['time_limit']:g}~s per chunk ({int(exact['optimal_chunks'].sum())} of "
        f"{int(exact['chunks'].sum())} proven optimal). Pruning keeps $k = n\\,b/16$ weights (free mask), refit "
        f"box $2\\max|w|$. Grid detection: {escape_tex(verdict)}."
    )


def _with_protocol(text: str) -> Caption:
    """The caption ``text`` followed by the protocol of the sweep (:func:`_protocol`)."""

    def caption(tables: Tables, facts: Mapping[str, Any]) -> str:
        return f"{text} {_protocol(tables, facts)}"

    return caption


_figure_caption = _with_protocol(
    "Per-layer compression problems: median over the swept layers of the output SQNR of the exact optima, the "
    "SDP bounds (drawn at their certified SQNR upper bound) and the heuristics, for quantization (solid) and "
    "pruning at equal size (dashed)."
)


@figure("per_layer_bounds", needs=(SWEEP,), caption=_figure_caption, section=SECTION)
def per_layer_bounds(tables: Tables) -> Figure:
    """Median output SQNR [dB] over layers vs bits, one line per (family, method) of :data:`SERIES`."""
    frame = tables[SWEEP]
    fig, ax = new_figure(height_ratio=0.6)
    for family, method, column, label, color, marker in SERIES:
        rows = frame[(frame["family"] == family) & (frame["method"] == method)]
        medians = rows.groupby("bits")[column].median().dropna()
        if medians.empty:
            continue
        ax.plot(medians.index.to_numpy(float), medians.to_numpy(float), color=OKABE_ITO[color], marker=marker,
                linestyle=FAMILY_LINESTYLE[family], label=label)
    ax.set_xticks(sorted(frame["bits"].unique()))
    ax.set_xlabel("Size [bits per weight; pruning at equal size]")
    ax.set_ylabel("Output SQNR [dB], median over layers")
    method_legend(ax)
    return fig


def bound_gaps_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (layer, b): the exact optima (dB), each heuristic's shortfall and each SDP bound's excess over the
    exact optimum of its family, |method − exact| in dB (:data:`GAPS`)."""
    values = frame.pivot_table(index=["block", "role", "bits"], columns=["family", "method"], aggfunc="first",
                               values=["sqnr_db", "sqnr_upper_db"], dropna=False)  # fmt: skip
    gaps = pd.DataFrame(index=values.index)
    for name, (family, method, column) in GAPS.items():
        series = values.get((column, family, method), pd.Series(np.nan, index=values.index))
        exact = values[("sqnr_db", family, "exact")]
        gaps[name] = series if name.endswith("_exact_db") else (series - exact).abs()
    gaps["quant_minus_prune_db"] = gaps["quant_exact_db"] - gaps["prune_exact_db"]
    gaps = gaps.reset_index()
    gaps["layer"] = gaps["block"].astype(str) + "." + gaps["role"].astype(str)
    return gaps


_gaps_caption = _with_protocol(
    "Bound gaps per layer and $b$ (dB): exact optima, how far each heuristic falls below the exact optimum of "
    "its family, and how far the SDP bound lies above it (a certified bound on the optimum; -- where not "
    "computed)."
)


@table("bound_gaps", needs=(SWEEP,), caption=_gaps_caption, section=SECTION)
def bound_gaps(tables: Tables) -> Styler:
    """Per (layer, b): exact optima and the gaps of :func:`bound_gaps_frame`."""
    return thesis_table(bound_gaps_frame(tables[SWEEP]), {
        "layer": "layer", "bits": "$b$", "quant_exact_db": "INT exact", "gptq_gap_db": "GPTQ",
        "rtn_gap_db": "RTN", "sdp_gap_db": "SDP", "prune_exact_db": "prune exact", "sparsegpt_gap_db": "SparseGPT",
        "sparsegpt_refit_gap_db": "+refit", "wanda_gap_db": "Wanda", "magnitude_gap_db": "mag.",
        "perspective_gap_db": "persp.", "quant_minus_prune_db": "INT $-$ prune",
    })  # fmt: skip
