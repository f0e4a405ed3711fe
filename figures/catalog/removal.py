"""Layer removal against pruning, quantization and the rate–distortion reference at exactly equal size.

One experiment, ``removal_study``, runs :func:`measure.removal.study.run_study` once and stores all its tables
stacked in one parquet (column ``table`` names the part: width_options, units, angular, single_units, layers,
blocks, layer_rd, levels, points, answer, end_to_end, base); :func:`study_part` takes one part back out. Every
error is named by its ``view`` (:data:`measure.removal.views.VIEWS`): layer view energy- or parameter-weighted,
block view, end to end. The figures and tables show

* block importance across depth: Block Influence (ShortGPT, arXiv 2403.03853, Eq. 1), angular distance at
  n = 1 (Gromov et al., arXiv 2403.17887) and the attention / MLP drop scores (LLM-Drop, arXiv 2406.15786);
* removal vs every method's curve over 2–16 bits in each view, with the Gaussian rate–distortion reference in
  the layer views, and the answer table: per view and removal level the removal's error, the best and worst
  method at exactly b(f) = 16(1 − f), the margins and each method's equivalent bits
  (:mod:`measure.removal.answer`);
* error propagation: local removal error vs end-to-end KL to the original, with Pearson r of the logs and
  Spearman ρ (:func:`measure.removal.study.propagation_correlation`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from pandas.io.formats.style import Styler

from figures.answers import answer, held_out_scale, interval_verdict, prose
from figures.catalog.models import CALIBRATION, EVALUATION, calibration, describe_protocol, evaluation_windows
from figures.experiments import ExperimentContext, experiment
from figures.registry import Tables, escape_tex, figure, table
from figures.removal_cells import SERIES_CODES, SERIES_NAMES, VIEW_CODES, equivalent_bits_cell, method_db_cell
from figures.style import OKABE_ITO, interval_bars, line_kwargs, method_legend, new_figure, thesis_table
from figures.ticks import sparse_log_minor_labels
from measure.evaluation.perplexity import INTERVAL_COLUMNS
from measure.removal.answer import answer_table, end_to_end_table
from measure.removal.stacked import STUDY_TABLE, stack_parts, stacked_study, study_part
from measure.removal.study import StudySettings, check_for_model, propagation_correlation, run_study
from measure.removal.terms import POINT_COLUMNS
from measure.removal.views import LOCAL_VIEWS

SECTION = "Layer removal against the bounds"
STUDY = STUDY_TABLE
PARTS = ("width_options", "units", "angular", "single_units", "layers", "blocks", "layer_rd", "levels", "points",
         "answer", "end_to_end", "base", "view_shares")
SETTINGS = {
    "max_removed": 8, "orderings": ["bi", "angular", "reverse", "random"], "seed": 0, "batch_size": 4,
    "probe_windows": 1, "sublayers": False, "quantizers": ["rtn", "gptq"], "groups": ["g128"],
    "quantizer_bits": {"rtn": [2, 3, 4, 5, 6, 7, 8, 11, 12, 13, 14, 15, 16], "gptq": [2, 3, 4, 5, 6, 7, 8]},
    "pruners": ["magnitude"], "pruner_sparsities": [0.5, 0.75], "mask_conventions": ["free", "entropy"],
    "widths": ["heads=0.34", "mlp=0.25:score=wanda"],
    "views": ["layer_energy", "layer_parameters", "block", "end_to_end"], "block_sequences": 1, "workers": None,
    "end_to_end_max_bits": 8, "end_to_end_conventions": ["free"], "answer_levels": [1, 2, 4, 8],
    "end_to_end_orderings": ["bi", "angular", "reverse"],
}  # fmt: skip
"""StudySettings of the default run, sized for the 30-minute budget with every end-to-end number on 8 × 512
held-out tokens: removal levels 1..8 blocks by the four orderings (BI, angular rule, reverse, random with seed
0) in the local views, and (the random ordering, a baseline of the figures, in the local views only) at the
levels the answer table reads (1, 2, 4 and 8 blocks: ``answer_levels``) also end to end and against every method
at exactly b(f); each block removed alone on 1 probe window; RTN and GPTQ in groups of 128 at every width 2–8
(no equivalent bits censored below 8 bits, none interpolated across more than one bit; the stored size of the
defaults, about 5 bits, puts every b(f) at that base between two of them), RTN also at 11–16 bits so that every
b(f) at a 16-bit base lies between two consecutive widths (those six widths are spliced into the equal-size
models of every view but not evaluated end to end alone: their KL is far below every removal's); magnitude
pruning at the equal-size sparsity of every answer level and mask convention (end to end: the free mask's) and
at 50 and 75 %; structured width pruning of 1 of the 3 KV groups (output score, exact) and of 25 % of the MLP
channels (Wanda score, refit), each at its own size and as the model takes it (another model's KV groups: the
``width_options`` part, :mod:`measure.removal.width_options`); the block view on the first evaluation window
(512 tokens). The full study (``pvq remove --study``) measures RTN and GPTQ at every width 2–16, per channel and
in groups of 128, and SparseGPT, all end to end."""
IMPORTANCE_SERIES = {
    "bi": ("Block Influence (block)", OKABE_ITO["blue"], "o"),
    "angular": ("angular distance, $n = 1$", OKABE_ITO["orange"], "s"),
    "attention": ("attention drop score", OKABE_ITO["bluish_green"], "^"),
    "mlp": ("MLP drop score", OKABE_ITO["vermillion"], "v"),
}
def study_parts(tables: Tables, *parts: str) -> tuple[pd.DataFrame, ...]:
    """The named parts (:func:`study_part`) of the study's stacked table in ``tables``, in the order named."""
    return tuple(study_part(tables[STUDY], part) for part in parts)


def _synthetic_levels(rng: np.random.Generator, blocks: int, influence: np.ndarray) -> pd.DataFrame:
    """Made-up removal levels with the columns of :func:`measure.removal.study.measure_levels`."""
    rows = []
    for ordering in ("bi", "angular"):
        for k in (1, 2):
            share = float(influence[-k:].sum() / influence.sum())
            kl = 0.3 * k * rng.uniform(0.8, 1.2)
            rows.append({
                "ordering": ordering, "removed": k, "blocks": ",".join(map(str, range(blocks - k, blocks))),
                "removed_fraction": k / blocks, "bits_per_decoder_parameter": 16 * (1 - k / blocks),
                "bits_per_linear_weight": 16 * (1 - k / blocks) - 0.01, "removal_error_layer_energy": share,
                "removal_error_layer_parameters": k / blocks, "removal_error_block": 0.8 * share,
                "perplexity": 20 * np.exp(kl), "kl_to_reference_nats": kl, "removal_error_end_to_end": kl,
                **{f"removal_error_{view}_{variant}": 0.5 * share for view in LOCAL_VIEWS
                   for variant in ("all_positions", "in_sample")},
                "removal_error_block_per_token": 0.7 * share,
                "error_ci_low": 0.9 * kl, "error_ci_high": 1.1 * kl, "perplexity_ci_low": 20 * np.exp(0.9 * kl),
                "perplexity_ci_high": 20 * np.exp(1.1 * kl), "same_top_rate": 0.8, "kl_p99": 5 * kl,
                "tokens": 4088,
            })  # fmt: skip
    return pd.DataFrame(rows)


WIDTH_POINTS = (("heads=0.34", "shrink_heads", 0.08), ("mlp=0.25:score=wanda", "shrink_mlp_wanda", 0.19))
"""Made-up width pruning points of the synthetic study: option, series, removed fraction."""


def _synthetic_points(rng: np.random.Generator, levels: pd.DataFrame) -> pd.DataFrame:
    """Made-up curve points with :data:`measure.removal.terms.POINT_COLUMNS` (6 dB per bit quantizers, a pruner
    under both mask conventions, the RD reference in the layer views, one spliced model per level)."""

    rows = []

    def add(view: str, series: str, family: str, term: str, bits: float, error: float, **extra: Any) -> None:
        end = view == "end_to_end"
        intervals = ({"error_ci_low": 0.9 * error, "error_ci_high": 1.1 * error, "perplexity_ci_low": 20.0,
                      "perplexity_ci_high": 21.0, "same_top_rate": 0.9, "kl_p99": 5 * error, "tokens": 4088}
                     if end else {"error_all_positions": 2 * error, "error_in_sample": 0.8 * error,
                                  "error_per_token": 1.5 * error if view == "block" else np.nan})  # fmt: skip
        rows.append({"view": view, "series": series, "family": family, "term": term, "mask_convention": None,
                     "bits_per_decoder_parameter": bits, "bits_per_linear_weight": bits - 0.01, "error": error,
                     "quality_db": -10 * np.log10(error), "perplexity": np.nan, "mixed": False,
                     "removed_fraction": np.nan, "size_gap_bits": np.nan, **intervals, **extra})  # fmt: skip

    for view in ("layer_energy", "layer_parameters", "block", "end_to_end"):
        scale = 0.05 if view == "end_to_end" else 1.0
        extra = (lambda e: {"perplexity": 20 * np.exp(e)}) if view == "end_to_end" else (lambda e: {})
        for series, base in (("rtn_g128", 0.5), ("gptq_g128", 0.3)):
            for bits in range(2, 17):
                error = scale * base * 4.0 ** (2 - bits) * rng.uniform(0.9, 1.1)
                add(view, series, "quantization", f"{series.split('_')[0]}:{bits}:g128", bits + 0.125, error,
                    **extra(error))  # fmt: skip
        for sparsity in (0.5, 0.75, 0.875, *levels["removed_fraction"].unique()):
            error = scale * 0.02 * np.exp(4 * sparsity)
            for name, mask_bits in (("free", 0.0), ("entropy", 0.5)):
                add(view, "magnitude", "pruning", f"magnitude:{sparsity:.9f}", 16 * (1 - sparsity) + mask_bits,
                    error, mask_convention=name, **extra(error))  # fmt: skip
        if view.startswith("layer"):
            for bits in [*range(2, 17), *levels["bits_per_decoder_parameter"].unique()]:
                error = 0.3 * 4.0 ** (1 - bits)
                add(view, "gaussian_rd", "reference", f"gaussian_rd:{bits:.6f}", float(bits), error)
        for option, series, fraction in WIDTH_POINTS:
            error = scale * 0.3 * fraction * rng.uniform(0.8, 1.2)
            add(view, series, "width", f"shrink:{option}", 16 * (1 - fraction), error, removed_fraction=fraction,
                **extra(error))  # fmt: skip
        if view == "end_to_end":
            sizes = levels[["removed_fraction", "bits_per_decoder_parameter"]].drop_duplicates()
            for fraction, bits in sizes.to_numpy():
                error = 1e-9 * rng.uniform(0.5, 2)
                add(view, "rtn_g128", "quantization", f"rtn_g128:mix@{fraction:.6f}", bits, error, mixed=True,
                    removed_fraction=fraction, size_gap_bits=1e-7, **extra(error))  # fmt: skip
    return pd.DataFrame(rows, columns=POINT_COLUMNS)


def synthetic_study(rng: np.random.Generator) -> pd.DataFrame:
    """A small stand-in for the stacked tables of :func:`measure.removal.study.run_study` (made-up values; the
    answer and end-to-end parts are computed from made-up levels and points by the study's own table functions)."""

    blocks = 6
    influence = np.sort(rng.uniform(0.02, 0.3, blocks))[::-1]
    units = pd.DataFrame([
        {"unit": unit, "block": b, "influence": scale * x, "removal_relative_error": 2 * scale * x}
        for unit, scale in (("block", 1.0), ("attention", 0.4), ("mlp", 0.6)) for b, x in enumerate(influence)
    ])  # fmt: skip
    units = units.assign(removal_sqnr_db=-10 * np.log10(units["removal_relative_error"]), tokens=4096,
                         parameters=1000, removed_fraction=1 / blocks,
                         bits_per_decoder_parameter=16 * (1 - 1 / blocks),
                         rank=units["block"])
    angular = pd.DataFrame([{"n": n, "start": s, "angular_distance": 0.1 * n + 0.05 * s / blocks, "chosen": s == 0}
                            for n in (1, 2) for s in range(blocks - n + 1)])  # fmt: skip
    single = units[units["unit"] == "block"][["unit", "block", "influence", "removal_relative_error",
                                              "removal_sqnr_db", "parameters"]].assign(
        kl_to_reference_nats=lambda f: 0.5 * f["removal_relative_error"] * rng.uniform(0.5, 2, blocks),
        perplexity=lambda f: 20 * np.exp(f["kl_to_reference_nats"]), base_perplexity=20.0, nri=1e-6, windows=1)
    layers = pd.DataFrame([{"layer": f"model.layers.{b}.{name}", "block": b, "parameters": 1000,
                            "output_energy": float(rng.uniform(1, 100))}
                           for b in range(blocks) for name in ("self_attn.q_proj", "mlp.down_proj")])  # fmt: skip
    layers = layers.assign(energy_share=layers["output_energy"] / layers["output_energy"].sum(),
                           output_energy_all_positions=3 * layers["output_energy"],
                           output_energy_in_sample=1.1 * layers["output_energy"])
    share = influence / influence.sum()
    block_shares = pd.DataFrame({"block": range(blocks), "layer_energy_share": share,
                                 "parameter_share": 1 / blocks, "update_energy_share": share})
    layer_rd = pd.DataFrame([{"layer": layer, "block": block, "bits_per_linear_weight": float(bits),
                              "rd_relative_error": 0.3 * 4.0 ** (1 - bits)}
                             for layer, block in layers[["layer", "block"]].to_numpy() for bits in range(2, 17)])
    layer_rd = layer_rd.assign(rd_sqnr_db=-10 * np.log10(layer_rd["rd_relative_error"]))
    levels = _synthetic_levels(rng, blocks, influence)
    points = _synthetic_points(rng, levels)
    views, conventions = SETTINGS["views"], SETTINGS["mask_conventions"]
    widths = pd.DataFrame([{"option": option, "measured_option": option, "status": "as requested", "reason": ""}
                           for option, _, _ in WIDTH_POINTS])  # fmt: skip
    parts = {"width_options": widths,
             "units": units, "angular": angular, "single_units": single, "layers": layers, "blocks": block_shares,
             "layer_rd": layer_rd, "levels": levels, "points": points,
             "answer": answer_table(levels, points, views, conventions),
             "end_to_end": end_to_end_table(levels, points),
             "base": pd.DataFrame([{"perplexity": 20.0, "kl_to_reference_nats": 0.0,
                                    **dict.fromkeys(INTERVAL_COLUMNS, 0.0), "tokens": 4088,
                                    "stored_bits_per_decoder_parameter": 5.01,
                                    "stored_bits_per_linear_weight": 5.0}]),
             "view_shares": pd.DataFrame({"view": ["layer_energy", "block"], "sink_share": [0.4, 0.7],
                                          "top_1pct_share": [np.nan, 0.75]})}  # fmt: skip
    return stack_parts(parts)


def study_settings(settings: Mapping[str, Any]) -> Any:
    """:class:`measure.removal.study.StudySettings` from the JSON form of :data:`SETTINGS` (lists → tuples)."""

    tuples = {key: tuple(value) for key, value in settings.items() if isinstance(value, list)}
    bits = {name: tuple(widths) for name, widths in settings["quantizer_bits"].items()}
    return StudySettings(**{**settings, **tuples, "quantizer_bits": bits})


def check_study(config: Mapping[str, Any], context: ExperimentContext) -> None:
    """The study's settings against the context's model (:func:`measure.removal.study.check_for_model`)."""
    check_for_model(study_settings(config["settings"]), context.model.model)


@experiment(STUDY, needs_model=True, synthetic=synthetic_study, check=check_study,
            config={"calibration": CALIBRATION, "evaluation": EVALUATION, "settings": SETTINGS})  # fmt: skip
def removal_study(config: Mapping[str, Any], context: ExperimentContext) -> pd.DataFrame:
    """:func:`measure.removal.study.run_study` on the loaded model with ``config["settings"]``, its tables
    stacked with a ``base`` part holding the original model's perplexity
    (:func:`measure.removal.stacked.stacked_study`, the shape ``pvq remove --study`` writes too). The settings are
    checked against the model (:func:`check_study`) before the calibration batches are read."""

    check_study(config, context)
    loaded = context.model
    stored = loaded.stored_size
    stored_bits = None if stored is None else stored.bits_per_decoder_parameter
    study = run_study(loaded.model, calibration(loaded, config["calibration"]),
                      evaluation_windows(loaded, config["evaluation"]), study_settings(config["settings"]),
                      log=context.step, stored_bits=stored_bits)  # fmt: skip
    return stacked_study(study, stored)


def _settings_text(facts: Mapping[str, Any]) -> str:
    config = facts["protocol"][STUDY]
    return f"{escape_tex(facts['model_id'])}; {describe_protocol(config)}"


def _importance_caption(tables: Tables, facts: Mapping[str, Any]) -> str:
    units = study_part(tables[STUDY], "units")
    blocks = units[units["unit"] == "block"].sort_values("influence")
    lowest = ", ".join(str(int(b)) for b in blocks["block"].head(4))
    return (
        "Importance of each block across depth: Block Influence BI $= 1 - \\mathbb{E}[\\cos(x_i, x_{i+1})]$ "
        "(ShortGPT), angular distance $d(\\ell, 1) = \\arccos(\\cos)/\\pi$ on the last token (Gromov et al.), "
        "and the attention and MLP drop scores (BI of each sublayer's residual update, LLM-Drop). "
        f"Lowest-BI blocks: {lowest}. {_settings_text(facts)}."
    )


@figure("block_importance_across_depth", needs=(STUDY,), caption=_importance_caption, section=SECTION)
def block_importance_across_depth(tables: Tables) -> Figure:
    """Per block index: BI, angular distance (n = 1) and attention / MLP drop scores, log y."""
    units, angular = study_parts(tables, "units", "angular")
    series = {name: units[units["unit"] == unit][["block", "influence"]].to_numpy(float)
              for name, unit in (("bi", "block"), ("attention", "attention"), ("mlp", "mlp"))}  # fmt: skip
    series["angular"] = angular[angular["n"] == 1][["start", "angular_distance"]].to_numpy(float)
    fig, ax = new_figure(height_ratio=0.5)
    for name, (label, color, marker) in IMPORTANCE_SERIES.items():
        points = series[name][np.argsort(series[name][:, 0])]
        ax.plot(points[:, 0], points[:, 1], color=color, marker=marker, label=label, markersize=3)
    ax.set_yscale("log")
    ax.set_xlabel("block index")
    ax.set_ylabel("importance score (1 − cos; arccos/π)")
    method_legend(ax)
    return fig


VIEW_TITLES = {
    "layer_energy": "layer view, energy-weighted", "layer_parameters": "layer view, parameter-weighted",
    "block": "block view (residual stream)", "end_to_end": "end to end",
}  # fmt: skip
VIEW_AXES = {
    "layer_energy": "rel. output error", "layer_parameters": "rel. output error",
    "block": "error / update energy", "end_to_end": "KL (nats/token)",
}  # fmt: skip
TABLE_ORDERINGS = ("bi", "angular")
TABLE_LEVELS = (1, 2, 4, 8)
ANSWER_LEVEL = 4
"""The removal level the one-sentence answer speaks of (the largest level present when fewer were run)."""


def _removal_style(ordering: str) -> dict[str, Any]:
    """Line style of one removal ordering (:func:`figures.style.line_kwargs` of ``remove:<ordering>``)."""
    return line_kwargs(f"remove:{ordering}", "removal")


def _series_style(series: str, family: str, convention: str) -> dict[str, Any]:
    """Line style of one curve; a pruner under the entropy-coded mask is drawn open and dotted."""
    kwargs = line_kwargs(series, family)
    if convention == "entropy":
        kwargs |= {"label": f"{kwargs['label']}, entropy-coded mask", "linestyle": ":", "markerfacecolor": "none"}
    elif family == "pruning":
        kwargs["label"] = f"{kwargs['label']}, free mask"
    return kwargs


def _view_panel(ax: Axes, points: pd.DataFrame, levels: pd.DataFrame, view: str, stored_bits: float = np.nan
                ) -> None:  # fmt: skip
    """Every method's error over bits per parameter in ``view`` (log y), the removal levels as markers at b(f) for
    a 16-bit base (filled) and at the model's stored size (open), end to end with their 95 % intervals, and the
    stored format itself (the native re-encoding: zero error at its own size) as a vertical line."""
    rows = points[(points["view"] == view) & ~points["mixed"].astype(bool)]
    conventions = rows["mask_convention"].astype("string").fillna("")
    for (series, convention), group in rows.groupby([rows["series"], conventions], sort=True):
        group = group.sort_values("bits_per_decoder_parameter")
        ax.plot(group["bits_per_decoder_parameter"], group["error"], markersize=2.5,
                **_series_style(series, group["family"].iloc[0], convention))  # fmt: skip
    for ordering, group in levels.groupby("ordering", sort=True):
        kwargs = _removal_style(ordering) | {"linestyle": "none"}
        values = group[f"removal_error_{view}"]
        if view == "end_to_end" and "error_ci_low" in group:
            interval_bars(ax, group["bits_per_decoder_parameter"], values, group["error_ci_low"],
                          group["error_ci_high"],
                          kwargs["color"], elinewidth=0.6)  # fmt: skip
        ax.plot(group["bits_per_decoder_parameter"], values, markersize=3.5, **kwargs)
        if np.isfinite(stored_bits):
            stored = (1 - group["removed_fraction"]) * stored_bits
            ax.plot(stored, values, markersize=3.5, **(kwargs | {"markerfacecolor": "none", "label": "_"}))
    if np.isfinite(stored_bits):
        ax.axvline(stored_bits, color=OKABE_ITO["black"], linewidth=0.6, linestyle=(0, (1, 2)),
                   label="stored format (zero error)")  # fmt: skip
    if len(levels):  # where the comparison happens: the removal levels' sizes at a 16-bit base
        sizes = levels["bits_per_decoder_parameter"]
        ax.axvspan(sizes.min(), sizes.max(), color=OKABE_ITO["black"],
                   alpha=0.07, linewidth=0, label="removal sizes $b(f)$")  # fmt: skip
    ax.set_yscale("log")
    ax.set_ylabel(VIEW_AXES[view], fontsize="small")


def _answer_rows(tables: Tables) -> pd.DataFrame:
    return study_part(tables[STUDY], "answer")


ANSWER_SERIES = ("gptq_g128", "gptq_channel", "rtn_g128", "rtn_channel")
"""Quantizers the one-sentence answer speaks of, in order of preference (the first whose curve reaches the
removal's error in a view)."""


def answer_series(rows: pd.DataFrame) -> str | None:
    """The quantizer the answer speaks of in every view: the first of :data:`ANSWER_SERIES` in the answer table
    (one method for all views, so the views compare like with like)."""
    return next((s for s in ANSWER_SERIES if f"equivalent_bits_{s}" in rows and rows[f"equivalent_bits_{s}"]
                 .notna().any()), None)  # fmt: skip


def _interval(row: pd.Series, column: str, digits: int = 1) -> str:
    """``" (95 % interval lo–hi)"`` of ``column`` when its ``_ci_low`` / ``_ci_high`` exist, else ``""``."""
    low, high = row.get(f"{column}_ci_low", np.nan), row.get(f"{column}_ci_high", np.nan)
    if pd.isna(low) or pd.isna(high):
        return ""
    high_text = "∞" if np.isinf(high) else f"{high:.{digits}f}"
    return f" (95 \\% interval {low:.{digits}f}--{high_text})"


def _break_even_prose(row: pd.Series, series: str, name: str) -> str:
    """The break-even base and the verdicts at 16 bits and at the stored size, in words."""
    value = row.get(f"break_even_base_{series}", np.nan)
    if pd.isna(value):
        return ""
    verdicts = {"removal better": "better", "removal worse": "worse", "indistinguishable": "indistinguishable"}
    at_16 = verdicts.get(str(row.get(f"verdict_base16_{series}", "")), "")
    stored = row.get("stored_bits_per_decoder_parameter", np.nan)
    at_stored = verdicts.get(str(row.get(f"verdict_stored_{series}", "")), "")
    stored_text = (f", and at the model's stored {stored:.2f} bits {at_stored}" if pd.notna(stored) and at_stored
                   else "")  # fmt: skip
    return (f" Removal beats {name} at equal size only if the model is stored at fewer than $B^* = {value:.1f}$ "
            f"bits per parameter end to end{_interval(row, f'break_even_base_{series}')}: at a 16-bit base it is "
            f"{at_16}{stored_text}.")  # fmt: skip


def _paired_prose(row: pd.Series) -> str:
    """End to end: the removal against the best method at b(f), with the paired interval of the KL difference."""
    if pd.isna(row.get("best_kl_difference", np.nan)):
        return ""
    name = SERIES_NAMES.get(str(row["best_series"]), str(row["best_series"]))
    outcome = str(row.get("best_outcome", ""))
    words = {"removal better": "removal better", "removal worse": "removal worse",
             "indistinguishable": "indistinguishable"}.get(outcome, outcome)  # fmt: skip
    interval = _interval(row, "best_kl_difference", 3)
    return (f" End to end against the best method at $b(f)$ ({escape_tex(name)}), KL$_\\text{{removal}}$ $-$ "
            f"KL$_\\text{{method}}$ = {row['best_kl_difference']:+.3f} nats/token{interval}: "
            f"{words}.")  # fmt: skip


def _answer_sentence(answer: pd.DataFrame) -> str:
    """The study's answer read off the answer table (BI ordering, free mask, :data:`ANSWER_LEVEL` blocks): per view
    the equivalent bits of one quantizer (:func:`answer_series`; end to end with its interval), the break-even
    base with the verdicts at 16 bits and at the stored size, and end to end the paired difference to the best
    method at b(f), called better or worse only when its interval excludes 0."""
    rows = answer[(answer["ordering"] == "bi") & (answer["mask_convention"] == "free")]
    if rows.empty:
        return ""
    level = min(ANSWER_LEVEL, int(rows["removed"].max()))
    rows = rows[rows["removed"] == level].set_index("view")
    series = answer_series(rows)
    if series is None:
        return ""
    name = escape_tex(SERIES_NAMES.get(series, series))
    parts = []
    for view, row in rows.iterrows():
        interval = _interval(row, f"equivalent_bits_{series}") if view == "end_to_end" else ""
        parts.append(f"{_bits_prose(row, series)} {name} {VIEW_PROSE[str(view)]}{interval}")
    bits = rows["bits_per_decoder_parameter"].iloc[0]
    end = rows.loc["end_to_end"] if "end_to_end" in rows.index else None
    count = np.nan if end is None else end.get("tokens", np.nan)
    tokens = "" if pd.isna(count) else f" on {int(count)} held-out tokens"
    tail = "" if end is None else _break_even_prose(end, series, name) + _paired_prose(end)
    return (f"Answer{tokens}: removing the {level} lowest-BI blocks ($b(f) = {bits:.2f}$ bits per parameter at a "
            f"16-bit base) makes the error of {', of '.join(parts)}.{tail}")  # fmt: skip


VIEW_PROSE = {"layer_energy": "in the energy-weighted layer view", "layer_parameters":
              "in the parameter-weighted layer view", "block": "in the block view", "end_to_end": "end to end"}


def _bits_prose(row: pd.Series, series: str) -> str:
    """Equivalent bits in words: "3.0-bit", "more than 4.1-bit" or "fewer than 2.1-bit"."""
    censored = str(row.get(f"equivalent_bits_{series}_censored", ""))
    prefix = {"below": "fewer than ", "above": "more than "}.get(censored, "")
    return f"{prefix}{row[f'equivalent_bits_{series}']:.1f}-bit"


@answer(SECTION, needs=(STUDY,), question="Remove whole blocks, or compress every block to the same size?")
def removal_answer(tables: Tables) -> str:
    """The section's answer in plain words: end to end, the removal of the :data:`ANSWER_LEVEL` lowest-BI blocks
    against the best method at exactly its size (the paired KL difference, named only when its interval excludes
    zero), and the stored size below which removal would break even (:func:`_break_even_plain`)."""
    rows = _answer_rows(tables)
    rows = rows[(rows["ordering"] == "bi") & (rows["mask_convention"] == "free") & (rows["view"] == "end_to_end")]
    series = answer_series(rows)
    if rows.empty or series is None:
        return ""
    row = rows[rows["removed"] == min(ANSWER_LEVEL, int(rows["removed"].max()))].iloc[0]
    blocks = int(study_part(tables[STUDY], "units").query("unit == 'block'")["block"].nunique())
    removing = (f"removing the {int(row['removed'])} least important of the {blocks} blocks "
                f"({100 * row['removed_fraction']:.0f} \\% of the decoder)")  # fmt: skip
    return f"{_removal_verdict_plain(row, removing, series)}{_break_even_plain(row, series)}"


def _removal_verdict_plain(row: pd.Series, removing: str, series: str) -> str:
    """The removal against the best method at its size (the paired KL difference, named only when its interval
    excludes zero); without a paired difference, the size at which ``series`` does the same damage."""
    scale = held_out_scale(row["tokens"])
    if pd.isna(row.get("best_kl_difference", np.nan)):
        name = escape_tex(SERIES_NAMES.get(series, series))
        high = row.get(f"equivalent_bits_{series}_ci_high", np.nan)
        lead = "Compress" if pd.notna(high) and high < row["bits_per_decoder_parameter"] else "Not resolved"
        return (f"{lead}: {removing} does as much damage as compressing every block with {name} to "
                f"{_bits_prose(row, series).removesuffix('-bit')} bits per parameter"
                f"{_interval(row, f'equivalent_bits_{series}')} instead of the "
                f"{row['bits_per_decoder_parameter']:.1f} bits "
                f"the removal leaves ({scale}).")  # fmt: skip
    low, high = row["best_kl_difference_ci_low"], row["best_kl_difference_ci_high"]
    verdict = interval_verdict(low, high, "removal harms the model less", "removal harms it more", row["tokens"])
    lead = "Remove" if high < 0 else "Compress" if low > 0 else "No difference measured"
    name = escape_tex(SERIES_NAMES.get(str(row["best_series"]), str(row["best_series"])))
    return (f"{lead}: {removing} and instead compressing every block with {name} to the same size differ in "
            f"damage (extra KL to the original) by {row['best_kl_difference']:+.3f} nats/token (95 \\% paired "
            f"interval {low:+.3f} to {high:+.3f}; {scale}): {verdict}.")  # fmt: skip


def _break_even_plain(row: pd.Series, series: str | None) -> str:
    """The stored size below which removal would beat ``series`` end to end, beside the model's stored size."""
    value = row.get(f"break_even_base_{series}", np.nan)
    if series is None or pd.isna(value):
        return ""
    stored = row.get("stored_bits_per_decoder_parameter", np.nan)
    stored_text = (f"; this model is stored at {stored:.1f} bits, so its 16-bit original is hypothetical"
                   if pd.notna(stored) else "")  # fmt: skip
    return (f" Removal would break even only for a model stored at fewer than {value:.1f} bits per parameter"
            f"{_interval(row, f'break_even_base_{series}')}{stored_text}.")  # fmt: skip


def in_sample_optimism_db(points: pd.DataFrame, term: str = "gptq:4:g128", view: str = "layer_energy") -> float:
    """How much better ``term`` looks in ``view`` when scored on the calibration data it was fitted on than on
    held-out data: 10·log10(held-out error / in-sample error), dB (NaN when not measured)."""
    rows = points[(points["term"] == term) & (points["view"] == view)]
    if rows.empty or "error_in_sample" not in rows or rows["error_in_sample"].isna().all():
        return float("nan")
    row = rows.iloc[0]
    return float(10 * np.log10(row["error"] / row["error_in_sample"]))


@prose(SECTION, needs=(STUDY,))
def removal_prose(tables: Tables) -> str:
    """The section's opening paragraph: the question, the answer sentence, the protocol's scale and the threats to
    validity, every number from the study's table."""
    frame = tables[STUDY]
    units, base, shares, points = (study_part(frame, part) for part in ("units", "base", "view_shares", "points"))
    blocks = int(units[units["unit"] == "block"]["block"].nunique())
    tokens = base["tokens"].iloc[0] if "tokens" in base else np.nan
    scale = f"{int(tokens)} held-out tokens" if pd.notna(tokens) else "the held-out evaluation windows"
    sink = shares.set_index("view")["sink_share"].get("block", np.nan) if not shares.empty else np.nan
    optimism = in_sample_optimism_db(points)
    stored = base.get("stored_bits_per_decoder_parameter", pd.Series([np.nan])).iloc[0]
    text = [
        f"Does removing whole decoder blocks (ShortGPT) fit the bounds of pruning and quantization at exactly "
        f"equal size? The model has {blocks} blocks; removal and every method are measured on one signal per "
        "view with one denominator for both, and each method is read at exactly the removal's size from a model "
        f"spliced row by row between two measured widths. {_answer_sentence(_answer_rows(tables))}",
        f"Every end-to-end number is scored on {scale} with a 95 \\% block-bootstrap interval, every difference "
        "on the same tokens for both variants, and a difference is called one only when its interval excludes "
        "zero.",
    ]
    if pd.notna(sink):
        text.append(f"The local views are scored on held-out tokens without the first position of every window: "
                    f"over all positions that one position holds {100 * sink:.0f} \\% of the block view's "
                    "denominator.")  # fmt: skip
    if pd.notna(optimism):
        text.append(f"Scored on the calibration data it was fitted on, GPTQ (4-bit, g128) would look "
                    f"{optimism:.1f} dB better in the energy-weighted layer view than on held-out data, which is "
                    "why no view scores a method on its fitting data.")  # fmt: skip
    threats = "Threats to validity: one small model"
    if pd.notna(stored):
        threats += (f", stored at {stored:.2f} bits per decoder parameter before dequantization, so the 16-bit "
                    "base is hypothetical (the equivalent bits and the break-even base do not depend on it)")
    text.append(threats + f"; {scale} of English Wikipedia; a Gaussian rate--distortion reference, not a bound.")
    return " ".join(text)


def _bounds_caption(tables: Tables, facts: Mapping[str, Any]) -> str:
    return (
        "Error against size in bits per decoder parameter, one panel per view, each one signal for removal and "
        "for every method. The local views (a--c) are scored on held-out evaluation tokens with the first "
        "position of every window (the attention sink) left out, while every method is fitted on the calibration "
        "data; the in-sample and all-positions values are columns of the study's table. (a) layer view, "
        "energy-weighted: "
        r"$\sum_\ell \mathrm{tr}(\Delta W H \Delta W^\top) / \sum_\ell \mathrm{tr}(W H W^\top)$ over the "
        r"decoder's linear layers (bias-free outputs, original inputs; removal sets $\hat W = 0$); (b) layer "
        "view, parameter-weighted mean of the layers' relative errors (removal: the parameter share of the "
        "removed "
        r"linears); (c) block view: $\sum_i \lVert \hat y_i - y_i \rVert^2 / \sum_i \lVert y_i - x_i "
        r"\rVert^2$ with each block on its original input (removal: $\hat y_i = x_i$); (d) KL to the original "
        "model on the evaluation windows. Quantizers at integer widths, pruners at their sparsities with a free "
        "or "
        "entropy-coded mask; the rate--distortion reference is that of independent Gaussian coordinates in each "
        r"Gram's eigenbasis (reverse water-filling on $\lambda_j s_j^2$, $H = V \Lambda V^\top$, $s_j^2$ the "
        r"mean over rows of $(v_j^\top w)^2$), each layer at the same rate: a reference for Gaussian weights, "
        "not a bound on the real ones; dashed: the same reference with the rate water-filled jointly over all "
        "the decoder's layers. Removal orderings as filled markers at $b(f) = 16(1-f)$ (a 16-bit base) and as "
        "open markers at $B_s(1-f)$ for the model's stored size $B_s$ (dotted vertical line: the stored format "
        "itself, the native re-encoding, zero error at its own size); end to end with 95 \\% block-bootstrap "
        f"intervals; shaded: the range of the removal levels' sizes $b(f)$. {_settings_text(facts)}."
    )


@figure("removal_vs_bounds", needs=(STUDY,), caption=_bounds_caption, section=SECTION)
def removal_vs_bounds(tables: Tables) -> Figure:
    """One panel per view: error (log) vs bits per decoder parameter for every method, the RD reference and the
    removal levels of every ordering."""
    points, levels, base = study_parts(tables, "points", "levels", "base")
    stored_bits = float(base.get("stored_bits_per_decoder_parameter", pd.Series([np.nan])).iloc[0])
    views = [view for view in VIEW_TITLES if view in set(points["view"])]
    fig, axes = new_figure(nrows=2, ncols=2, height_ratio=0.85)
    for letter, ax, view in zip("abcd", axes.flat, views, strict=False):
        _view_panel(ax, points, levels, view, stored_bits)
        ax.set_title(f"({letter}) {VIEW_TITLES[view]}", loc="left", fontsize="small")
        ax.set_xlabel("bits per decoder parameter", fontsize="small")
    for ax in axes.flat[len(views):]:
        ax.set_visible(False)
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        handles |= dict(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=3, frameon=False,
               fontsize="x-small")  # fmt: skip
    return fig


def answer_display(answer: pd.DataFrame) -> pd.DataFrame:
    """The rows and cells of the ``removal_verdicts`` table: free-mask rows of :data:`TABLE_ORDERINGS` at
    :data:`TABLE_LEVELS`, with the worst method and the pruner's equivalent bits under the entropy-coded mask."""
    keys = ["view", "ordering", "removed"]
    free = answer[(answer["mask_convention"] == "free") & answer["ordering"].isin(TABLE_ORDERINGS)
                  & answer["removed"].isin(TABLE_LEVELS)]  # fmt: skip
    entropy = answer[answer["mask_convention"] == "entropy"].set_index(keys)
    suffixes = ("_censored", "_ci_low", "_ci_high")
    measured = [c.removeprefix("equivalent_bits_") for c in answer.columns
                if c.startswith("equivalent_bits_") and not c.endswith(suffixes)]  # fmt: skip
    rows = []
    for _, row in free.iterrows():
        key = tuple(row[k] for k in keys)
        shown = {"view": VIEW_CODES[row["view"]], "ordering": row["ordering"],
                 "removed": int(row["removed"]), "bits_per_decoder_parameter": row["bits_per_decoder_parameter"],
                 "removal_db": row["removal_db"], "best": method_db_cell(row, "best"),
                 "worst": method_db_cell(row, "worst"),
                 "worst_entropy": method_db_cell(entropy.loc[key], "worst") if key in entropy.index else "–",
                 "rd_db": row["rd_db"]}  # fmt: skip
        for series in measured:
            shown[f"eq_{series}"] = equivalent_bits_cell(row, series)
        rows.append(shown)
    return pd.DataFrame(rows)


def _verdict_table_caption(tables: Tables, facts: Mapping[str, Any]) -> str:
    answer = _answer_rows(tables)
    codes = ", ".join(f"{code} = {escape_tex(SERIES_NAMES.get(series, series))}"
                      for series, code in SERIES_CODES.items() if f"equivalent_bits_{series}" in answer)
    levels = ", ".join(map(str, TABLE_LEVELS))
    return (
        "Removal against the methods at exactly equal size $b(f) = 16(1-f)$ bits per decoder parameter, per view "
        "(LE, LP: layer view energy- and parameter-weighted, B: block view, E2E: end to end; definitions in "
        "Fig.~\\ref{fig:removal_vs_bounds}). dB $= -10\\log_{10}$ of the view's error (end to end: of the KL in "
        "nats/token). Removal: the removal's dB; Best, Worst: the best and worst method at $b(f)$ (free mask; "
        "Worst H: pruners charged $H(s)$ bits per weight for an entropy-coded mask); quantizers interpolated in "
        "dB between the two integer widths that bracket $b(f)$, end to end a model spliced from those two widths "
        "at $b(f)$; RD: Gaussian rate--distortion reference (a reference for Gaussian weights, not a bound); "
        "$\\equiv$: equivalent bits, the size at which the method makes the removal's error ($<$: worse than the "
        f"method at its smallest size measured, $>$: better than at its largest). Codes: {codes}. Orderings BI "
        f"and angular, $n \\in \\{{{levels}\\}}$ (all levels and orderings in the study's parquet). "
        f"{_answer_sentence(answer)} {_settings_text(facts)}."
    )


@table("removal_verdicts", needs=(STUDY,), caption=_verdict_table_caption, section=SECTION)
def removal_verdicts(tables: Tables) -> Styler:
    """One row per view, ordering and n removed: b(f), the removal's dB, the best and worst method at b(f) (free
    and entropy-coded masks), the RD reference and every method's equivalent bits."""
    shown = answer_display(_answer_rows(tables))
    labels = {"view": "View", "ordering": "Ord.", "removed": "$n$", "bits_per_decoder_parameter": "$b(f)$",
              "removal_db": "Removal", "best": "Best", "worst": "Worst", "worst_entropy": "Worst H", "rd_db": "RD"}
    labels |= {c: f"$\\equiv${SERIES_CODES.get(c.removeprefix('eq_'), c.removeprefix('eq_'))}"
               for c in shown.columns if c.startswith("eq_")}  # fmt: skip
    return thesis_table(shown, labels, precision=1)


def _propagation_caption(tables: Tables, facts: Mapping[str, Any]) -> str:
    single = study_part(tables[STUDY], "single_units")
    blocks = single[single["unit"] == "block"]
    levels = study_part(tables[STUDY], "levels").drop_duplicates("blocks")
    parts = []
    pairs = (("single blocks", blocks["removal_relative_error"], blocks["kl_to_reference_nats"]),
             ("distinct removal sets", levels["removal_error_block"], levels["kl_to_reference_nats"]))
    for label, local, kl in pairs:
        corr = propagation_correlation(local, kl)
        parts.append(f"{label}: Pearson $r = {corr['pearson_log10']:.2f}$ of the logs, Spearman "
                     f"$\\rho = {corr['spearman']:.2f}$ ($n = {corr['n']}$)")  # fmt: skip
    return (
        "Error propagation: local removal error vs end-to-end KL to the original model, (a) each block alone "
        "(residual update over block output energy, "
        "$\\lVert y_i - x_i \\rVert^2 / \\lVert y_i \\rVert^2$), (b) the "
        "distinct removal sets in the block view (removed update energy over the update energy of all blocks); "
        f"{'; '.join(parts)}. Single blocks on {int(single['windows'].iloc[0])} probe window(s). "
        f"{_settings_text(facts)}."
    )


@figure("error_propagation", needs=(STUDY,), caption=_propagation_caption, section=SECTION)
def error_propagation(tables: Tables) -> Figure:
    """KL [nats/token] vs local relative error, log–log: (a) each block alone (update energy over its output
    energy), (b) each ordering's removal sets (block view: removed over total update energy)."""
    single, levels = study_parts(tables, "single_units", "levels")
    single = single[single["unit"] == "block"]
    fig, (alone, sets) = new_figure(ncols=2, height_ratio=0.45)
    alone.scatter(single["removal_relative_error"], single["kl_to_reference_nats"], color=OKABE_ITO["black"],
                  marker="o", s=10, label="one block removed")  # fmt: skip
    for ordering, rows in levels.groupby("ordering", sort=True):
        kwargs = _removal_style(ordering)
        sets.scatter(rows["removal_error_block"], rows["kl_to_reference_nats"], color=kwargs["color"],
                     marker=kwargs["marker"], s=14, label=kwargs["label"])  # fmt: skip
    labels = (("a", "update / output energy"), ("b", "block view error"))
    for ax, (letter, xlabel) in zip((alone, sets), labels, strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        sparse_log_minor_labels(ax.xaxis)  # half-width panels: 2, 3, 4, 6 × 10^k labels would collide
        ax.set_xlabel(f"local removal error ({xlabel})", fontsize="small")
        ax.set_ylabel("KL (nats/token)")
        ax.set_title(f"({letter})", loc="left", fontsize="small")
        method_legend(ax)
    return fig
