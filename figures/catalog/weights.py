"""The paper's Fig. 3 on an LLM: every linear weight tensor, INT-b quantization vs magnitude pruning at equal size.

For each weight tensor of the decoder blocks and b = 2, 3, 4: the weight SQNR of INT-b (per-tensor scale,
MSE-optimal clipping) against that of magnitude pruning at the sparsity of equal compression, with the
tensor's kurtosis as colour (:func:`measure.ledger.weight_tensor_study`, Kuzmin et al. 2023, Sec. 3, Fig. 3).
Points above the diagonal are tensors where quantization wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from figures.answers import answer, prose
from figures.experiments import ExperimentContext, experiment
from figures.registry import Tables, escape_tex, figure
from figures.style import method_style, new_figure
from measure.ledger import weight_tensor_study as study
from theory.accounting import PAPER_CONVENTION, Convention

SECTION = "Quantization versus pruning on LLM weights"
STUDY = "weight_tensor_study"
BITS = (2, 3, 4)
KURTOSIS_CMAP = "viridis"
PANEL_MARKER_SIZE = 9
KURTOSIS_COLORBAR_TICKS = (3, 5, 10, 20, 50, 100, 200, 500, 1000)
"""Kurtosis values labelled on the colour bar, as plain numbers (spaced apart enough on its log scale)."""


def synthetic_weight_study(rng: np.random.Generator) -> pd.DataFrame:
    """A small stand-in for :func:`measure.ledger.weight_tensor_study` (same columns, made-up values)."""
    rows = []
    for block in range(3):
        for role, sublayer in (("q", "attention"), ("k", "attention"), ("down", "mlp")):
            kurtosis = float(rng.uniform(3.2, 40.0))
            for bits in BITS:
                quant = 6.02 * bits - 4.0 - 2.0 * np.log(kurtosis / 3)
                prune = 1.5 + 1.2 * bits + 2.5 * np.log(kurtosis / 3)
                rows.append({"distribution": "empirical", "kurtosis": kurtosis, "bits": bits,
                             "bits_per_weight": float(bits), "sparsity": 1 - bits / 16, "quant_sqnr_db": quant,
                             "prune_sqnr_db": prune, "diff_db": quant - prune, "pruning_wins": quant < prune,
                             "clip_sigma": 3.0, "convention": "{}", "grid": "signed", "clip_rule": "mse",
                             "prune_bits_per_weight": float(bits), "numel": 576 * 576,
                             "layer": f"model.layers.{block}.{sublayer}.{role}", "block": block,
                             "sublayer": sublayer, "role": role, "expert": None})  # fmt: skip
    return pd.DataFrame(rows).astype({"expert": "Int64"})


@experiment(STUDY, config={"bits": list(BITS), "convention": PAPER_CONVENTION.as_dict()}, needs_model=True,
            synthetic=synthetic_weight_study)  # fmt: skip
def weight_tensor_study(config: Mapping[str, Any], context: ExperimentContext) -> pd.DataFrame:
    """One row per (linear weight tensor, b): :func:`measure.ledger.weight_tensor_study` on the loaded model."""

    return study(context.model.model, config["bits"], Convention(**config["convention"]))


@answer(SECTION, needs=(STUDY,), question="Pruning or quantization, weight tensor by weight tensor?")
def tensor_answer(tables: Tables) -> str:
    """Pruning or quantization, per weight tensor (the paper's Fig. 3 question on this model), in plain words:
    which keeps more of each tensor at equal size, in how many (tensor, width) cases. Exact on the full tensors (no
    sampling), so no interval."""
    frame = tables[STUDY]
    pruning = int(frame["pruning_wins"].astype(bool).sum())
    quantization = len(frame) - pruning
    lead = ("Quantization" if quantization > pruning else "Pruning" if pruning > quantization else "Neither")
    *first, last = (str(int(bits)) for bits in sorted(frame["bits"].unique()))
    widths = f"{', '.join(first)} and {last}" if first else last
    return (
        f"{lead}: at {widths} bits per weight, rounding a weight tensor to a coarse grid keeps more of it than "
        f"dropping its smallest weights to reach the same size in {quantization} of {len(frame)} cases, and "
        f"dropping keeps more in {pruning} (all {frame['layer'].nunique()} weight tensors of one model at each "
        "width; exact on the full weights, so no interval)."
    )


def _tensor_counts(frame: pd.DataFrame) -> str:
    """Per bit width: how many tensors favour quantization, and the median SQNR difference (dB)."""
    return "; ".join(f"at {bits} bits quantization has the higher weight SQNR for "
                     f"{int((~rows['pruning_wins'].astype(bool)).sum())} of {len(rows)} tensors (median "
                     f"difference {rows['diff_db'].median():+.1f} dB)" for bits, rows in frame.groupby("bits"))


@prose(SECTION, needs=(STUDY,))
def tensor_prose(tables: Tables) -> str:
    """The section's opening paragraph: Kuzmin et al.'s per-tensor question on this model, the answer, the role of
    the kurtosis (Spearman ρ of kurtosis and the SQNR difference), and the threats to validity."""
    frame = tables[STUDY]
    tensors = frame["layer"].nunique()
    rho = float(frame[["kurtosis", "diff_db"]].corr(method="spearman").iloc[0, 1])
    return (
        f"Kuzmin et al. compare pruning and quantization tensor by tensor at equal size; on the {tensors} linear "
        f"weight tensors of this model (INT-$b$ with MSE clipping against magnitude pruning, free mask), "
        f"{_tensor_counts(frame)}. Heavier "
        f"tails favour pruning: over all tensors and widths the Spearman rank correlation of the kurtosis with "
        f"the SQNR difference (quantization minus pruning) is {rho:.2f}. The SQNRs are exact on the full tensors, "
        "so they carry no sampling error. Threats to validity: the weight SQNR ignores the inputs (the later "
        "sections weight errors by the layers' input statistics); the model's default weights were published "
        "on a low-bit grid, which favours quantization at that width and above; one small model."
    )


def _caption(tables: Tables, facts: Mapping[str, Any]) -> str:
    frame = tables[STUDY]
    tensors = frame["layer"].nunique()
    wins = ", ".join(
        f"{int(rows['pruning_wins'].sum())}/{len(rows)} at {bits} bits" for bits, rows in frame.groupby("bits")
    )
    return (
        f"Weight SQNR of INT-$b$ quantization (per-tensor scale, MSE-optimal clipping) vs magnitude pruning at "
        f"equal size for each of the {tensors} linear weight tensors of {escape_tex(facts['model_id'])}, colour = "
        f"the tensor's kurtosis (Pearson, Gaussian = 3). Above the diagonal quantization wins; pruning wins for "
        f"{wins} tensors. Pruning size: kept values at 16 bits, free mask (Kuzmin et al. 2023, Fig. 3)."
    )


@figure("llm_tensor_pruning_vs_quantization", needs=(STUDY,), caption=_caption, section=SECTION)
def llm_tensor_pruning_vs_quantization(tables: Tables) -> Figure:
    """One panel per b: pruning SQNR (x) vs quantization SQNR (y) in dB, one point per tensor, log colour =
    kurtosis, with the diagonal y = x."""
    frame = tables[STUDY]
    bits = sorted(frame["bits"].unique())
    fig, axes = new_figure(ncols=len(bits), height_ratio=0.38)
    axes = np.atleast_1d(axes)
    norm = LogNorm(frame["kurtosis"].min(), frame["kurtosis"].max())
    for ax, b in zip(axes, bits, strict=True):
        rows = frame[frame["bits"] == b]
        points = ax.scatter(rows["prune_sqnr_db"], rows["quant_sqnr_db"], c=rows["kurtosis"], norm=norm,
                            cmap=KURTOSIS_CMAP, s=PANEL_MARKER_SIZE, marker=method_style("int").marker,
                            linewidths=0)  # fmt: skip
        low = float(min(rows["prune_sqnr_db"].min(), rows["quant_sqnr_db"].min()))
        high = float(max(rows["prune_sqnr_db"].max(), rows["quant_sqnr_db"].max()))
        ax.plot([low, high], [low, high], color="black", linewidth=0.8, linestyle="--", label="equal SQNR")
        ax.set_title(f"$b = {b}$ bits, sparsity {100 * rows['sparsity'].iloc[0]:.1f}%", fontsize="small")
        ax.set_xlabel("pruning SQNR (dB)")
    axes[0].set_ylabel("INT-$b$ SQNR (dB)")
    fig.legend(*axes[0].get_legend_handles_labels(), frameon=False, loc="outside lower center")
    colorbar = fig.colorbar(points, ax=list(axes))
    colorbar.set_label("kurtosis")
    ticks = [tick for tick in KURTOSIS_COLORBAR_TICKS if norm.vmin <= tick <= norm.vmax]  # plain, not a×10^b
    colorbar.set_ticks(ticks, labels=[f"{tick:g}" for tick in ticks])
    colorbar.ax.yaxis.set_minor_formatter(NullFormatter())
    return fig
