"""Perplexity and KL against compressed size: block removal vs quantization vs pruning vs both.

``compression_frontier`` compresses the model by each spec of :data:`SPECS`, calibrated on the original model's
stream, and scores it on the pinned evaluation windows with the original as KL reference
(:func:`measure.studies.frontier.compression_frontier_table`, the evaluator of the removal study, so the numbers
share its windows). The figure adds the removal study's end-to-end points
(removal orderings, RTN and GPTQ over 2–16 bits, magnitude pruning, structured width pruning, and the models
spliced at each removal's size). Size is the bits per weight of the decoder's compressed linear weights for
compression and b(f) = 16(1 − f) for removal and width pruning (Kuzmin et al. 2023, Sec. 3, free mask: pruning at
sparsity s costs 16(1 − s)); joint pruning + quantization is Sec. 5 of the same paper.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from figures.answers import held_out_scale, prose
from figures.catalog.models import (
    CALIBRATION,
    EVALUATION,
    calibration,
    check_specs,
    describe_protocol,
    evaluation_windows,
    spec_check,
)
from figures.catalog.removal import STUDY, study_part
from figures.experiments import ExperimentContext, experiment
from figures.labels import spec_label
from figures.registry import Tables, escape_tex, figure
from figures.style import OKABE_ITO, interval_bars, line_kwargs, method_order, new_figure
from measure.studies.frontier import compression_frontier_table

SECTION = "Perplexity at equal size"
PERPLEXITY_VIEW = 10.0
"""Panel (a) shows perplexity up to this multiple of the original's (models beyond it are in the KL panel)."""
FRONTIER = "compression_frontier"
SPECS = ("sparsegpt:0.5", "sparsegpt:0.5+gptq:4:g128")
"""SparseGPT at 50 % (8 bits per weight with a free mask) and the joint SparseGPT 50 % + GPTQ 4-bit point of the
pruning × quantization frontier. RTN and GPTQ (groups of 128) and magnitude pruning come from the removal study's
end-to-end points (same calibration, windows and evaluator), which measure them at many more sizes."""


def synthetic_frontier(rng: np.random.Generator) -> pd.DataFrame:
    """A small stand-in for :func:`compression_frontier` (same columns, made-up values)."""
    rows = [("rtn:3:g128", "rtn", "quantization", 3.125, 80.0),
            ("rtn:4:g128", "rtn", "quantization", 4.125, 26.0),
            ("gptq:3:g128", "gptq", "quantization", 3.125, 40.0),
            ("gptq:4:g128", "gptq", "quantization", 4.125, 23.0),
            ("magnitude:0.5", "magnitude", "pruning", 8.0, 150.0),
            ("sparsegpt:0.5", "sparsegpt", "pruning", 8.0, 35.0),
            ("sparsegpt:0.5+gptq:4:g128", "sparsegpt+gptq", "joint", 2.06, 45.0)]
    frame = pd.DataFrame(rows, columns=["spec", "method", "family", "bits_per_compressed_weight", "perplexity"])
    kl = np.log(frame["perplexity"] / 20.0) + rng.uniform(0, 0.05, len(frame))
    bits = frame["bits_per_compressed_weight"]
    return frame.assign(kl_to_reference_nats=kl, bits_per_model_parameter=bits + 3.0,
                        size_mb=bits * 1e8 / 8e6, base_perplexity=20.0,
                        kl_to_reference_nats_ci_low=0.9 * kl, kl_to_reference_nats_ci_high=1.1 * kl,
                        perplexity_ci_low=0.97 * frame["perplexity"],
                        perplexity_ci_high=1.03 * frame["perplexity"],
                        same_top_rate=0.8, kl_p99=5 * kl, tokens=4088)  # fmt: skip


@experiment(FRONTIER, needs_model=True, synthetic=synthetic_frontier, check=spec_check("specs"),
            config={"specs": list(SPECS), "calibration": CALIBRATION, "evaluation": EVALUATION})  # fmt: skip
def compression_frontier(config: Mapping[str, Any], context: ExperimentContext) -> pd.DataFrame:
    """One row per spec: method, family, ``bits_per_compressed_weight`` (over the linear weights the spec
    compresses), ``bits_per_model_parameter`` (over every parameter of the model, the uncompressed ones at 16
    bits) and MB, PPL and KL to the original on the evaluation windows with their 95 % intervals
    (:data:`measure.evaluation.perplexity.INTERVAL_COLUMNS`), and the original's PPL."""

    loaded = context.model
    check_specs(loaded, config["specs"])
    return compression_frontier_table(loaded.model, calibration(loaded, config["calibration"]),
                                      evaluation_windows(loaded, config["evaluation"]), config["specs"],
                                      config["calibration"]["mode"], config["calibration"]["batch_size"])


def frontier_points(tables: Tables) -> pd.DataFrame:
    """The frontier's points and the removal study's end-to-end points in one frame: series, family,
    bits_per_linear_weight (over the decoder's linear weights, the uncompressed ones at 16 bits; the frontier's
    specs compress every one of them, so their bits per compressed weight are this size), perplexity,
    kl_to_reference_nats (removal series are ``remove:<ordering>``)."""
    own = tables[FRONTIER]
    own = own.assign(series=own["method"], bits_per_linear_weight=own["bits_per_compressed_weight"])
    study = study_part(tables[STUDY], "end_to_end")
    removal = study["family"] == "removal"
    series = np.where(removal, "remove:" + study["method"].astype(str), study["method"].astype(str))
    study = study.assign(series=series).drop_duplicates(["series", "bits_per_linear_weight"])
    columns = ["series", "family", "bits_per_linear_weight", "perplexity", "kl_to_reference_nats"]
    return pd.concat([own[columns], study[columns]], ignore_index=True)


def _interval_bars(ax: Any, tables: Tables, column: str) -> None:
    """95 % block-bootstrap intervals of the removal levels' ``column`` (perplexity or KL) as vertical bars."""
    study = study_part(tables[STUDY], "end_to_end")
    removal = study[study["family"] == "removal"]
    low, high = ("perplexity_ci_low", "perplexity_ci_high") if column == "perplexity" else ("error_ci_low",
                                                                                          "error_ci_high")
    if low not in removal or removal[low].isna().all():
        return
    interval_bars(ax, removal["bits_per_linear_weight"], removal[column], removal[low], removal[high],
                  OKABE_ITO["black"], alpha=0.6)  # fmt: skip


def _caption(tables: Tables, facts: Mapping[str, Any]) -> str:
    own = tables[FRONTIER]
    base = float(own["base_perplexity"].iloc[0])
    specs = ", ".join(f"\\texttt{{{escape_tex(spec)}}}" for spec in own["spec"])
    return (
        f"Perplexity (a) and KL to the original (b) against size in bits per weight of the decoder's linear "
        "weights (pruning: $16(1-s)$ with a free mask; removal of a fraction $f$ of the decoder: the bits per "
        "linear weight of the same size, $16(1-f)$ per decoder parameter with norms at 16 bits). Compression: "
        f"{specs}, plus the removal study's orderings (dotted), RTN and GPTQ over 2--16 bits, magnitude pruning, "
        "structured width pruning (dash-dotted markers: KV groups or MLP channels removed, consumers refit; "
        "counted like removal, no mask) and the models spliced from two widths at each removal's size. "
        "Original (dequantized) model: "
        f"perplexity {base:.2f} (dashed line; panel (a) is cut at {PERPLEXITY_VIEW:g} times it, panel (b) shows "
        "every model); star and dotted line: the stored format itself (the native "
        "re-encoding), zero error at its own size. Removal levels with their 95 \\% block-bootstrap intervals. "
        f"{escape_tex(facts['model_id'])}; "
        f"{describe_protocol(facts['protocol'][FRONTIER])}."
    )


@figure("perplexity_vs_size", needs=(FRONTIER, STUDY), caption=_caption, section=SECTION)
def perplexity_vs_size(tables: Tables) -> Figure:
    """Two panels over bits per linear weight: perplexity (log) and KL [nats/token] (log), one series per
    method."""
    points = frontier_points(tables)
    base = float(tables[FRONTIER]["base_perplexity"].iloc[0])
    fig, (ppl, kl) = new_figure(ncols=2, height_ratio=0.6)
    for series in method_order(points["series"]):
        rows = points[(points["series"] == series) & points["perplexity"].notna()]
        if rows.empty:  # measured in the local views only (e.g. the random removal order): no legend entry
            continue
        rows = rows.sort_values("bits_per_linear_weight")
        kwargs = line_kwargs(series, rows["family"].iloc[0])
        if len(rows) == 1:
            kwargs["linestyle"] = "none"
        ppl.plot(rows["bits_per_linear_weight"], rows["perplexity"], **kwargs)
        kl.plot(rows["bits_per_linear_weight"], rows["kl_to_reference_nats"], **kwargs)
    ppl.axhline(base, color=OKABE_ITO["black"], linestyle="--", linewidth=0.8, label="original (dequantized)")
    stored = study_part(tables[STUDY], "base").get("stored_bits_per_linear_weight", pd.Series([np.nan])).iloc[0]
    if np.isfinite(stored):  # the stored format itself: zero error at its own size (KL 0 is off the log axis)
        ppl.plot([stored], [base], linestyle="none", marker="*", markersize=7, color=OKABE_ITO["black"],
                 label="stored format")  # fmt: skip
        kl.axvline(stored, color=OKABE_ITO["black"], linewidth=0.6, linestyle=(0, (1, 2)))
    for column, ax in (("perplexity", ppl), ("kl_to_reference_nats", kl)):
        _interval_bars(ax, tables, column)
    for ax, label, letter in ((ppl, "perplexity", "a"), (kl, "KL (nats/token)", "b")):
        ax.set_yscale("log")
        ax.set_xlabel("bits per linear weight")
        ax.set_ylabel(label)
        ax.set_title(f"({letter})", loc="left", fontsize="small")
    lowest = float(np.nanmin([points["perplexity"].min(), base]))
    ppl.set_ylim(0.95 * lowest, PERPLEXITY_VIEW * base)  # the region of interest; panel (b) shows every model
    handles, labels = ppl.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, frameon=False, fontsize=7)
    return fig


REFERENCE_QUANTIZER = "gptq:4:g128"
"""The removal study's end-to-end point the paragraph sets beside the frontier's pruned models."""


def _model_prose(spec: str, bits: float, row: pd.Series, low: str, high: str) -> str:
    """One compressed model in words: its spec, size, perplexity and KL with its 95 % interval."""
    return (f"{escape_tex(spec_label(spec))} at {bits:.2f} bits per weight: perplexity {row['perplexity']:.2f}, "
            f"KL {row['kl_to_reference_nats']:.3f} nats/token (95 \\% interval {row[low]:.3f} to {row[high]:.3f})")


@prose(SECTION, needs=(FRONTIER, STUDY))
def frontier_prose(tables: Tables) -> str:
    """The section's opening paragraph: end to end, the pruned and jointly compressed models beside GPTQ 4-bit from
    the removal study, on the same tokens, and the threats to validity."""
    own = tables[FRONTIER]
    study = study_part(tables[STUDY], "end_to_end")
    models = [_model_prose(row["spec"], row["bits_per_compressed_weight"], row, "kl_to_reference_nats_ci_low",
                           "kl_to_reference_nats_ci_high") for _, row in own.iterrows()]  # fmt: skip
    quantizer = study[study["spec"] == REFERENCE_QUANTIZER]
    if not quantizer.empty:
        row = quantizer.iloc[0]
        models.append(_model_prose(REFERENCE_QUANTIZER, row["bits_per_linear_weight"], row, "error_ci_low",
                                   "error_ci_high"))  # fmt: skip
    tokens = own["tokens"].iloc[0] if "tokens" in own else None
    return (
        "End to end, what matters is how far the compressed model's predictions drift from the original's: the "
        "KL divergence per token, beside the perplexity. The original model has perplexity "
        f"{own['base_perplexity'].iloc[0]:.2f} ({held_out_scale(tokens)}). {'; '.join(models)}. A difference "
        "between two models is called only where the intervals allow it. Threats to validity: perplexity "
        "and KL on English Wikipedia only; the original is the dequantized published model, so every size is "
        "counted against a hypothetical base; one small model."
    )
