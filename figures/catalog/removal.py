"""Layer removal against the bounds at equal compression (:mod:`measure.removal_study`).

One experiment, ``removal_study``, runs :func:`measure.removal_study.run_study` once and stores all its tables
stacked in one parquet (column ``table`` names the part: units, angular, single_units, curves, block_verdicts,
levels, end_to_end, base); :func:`study_part` takes one part back out. The figures show

* block importance across depth: Block Influence (ShortGPT, arXiv 2403.03853, Eq. 1), angular distance at
  n = 1 (Gromov et al., arXiv 2403.17887) and the attention / MLP drop scores (LLM-Drop, arXiv 2406.15786);
* removal vs the ledger's quantization and pruning curves at equal compression (b(f) = 16(1 − f)), with the
  verdict table (inside / below / above the methods' SQNR range, margin in dB);
* error propagation: local removal error vs end-to-end KL to the original, with Pearson r of the logs and
  Spearman ρ (:func:`measure.removal_study.propagation_correlation`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from pandas.io.formats.style import Styler

from figures.catalog.models import CALIBRATION, EVALUATION, calibration, describe_protocol, evaluation_windows
from figures.experiments import ExperimentContext, experiment
from figures.registry import Tables, escape_tex, figure, table
from figures.style import OKABE_ITO, line_kwargs, method_legend, new_figure, thesis_table

SECTION = "Layer removal against the bounds"
STUDY = "removal_study"
PARTS = ("units", "angular", "single_units", "curves", "block_verdicts", "levels", "end_to_end", "base")
SETTINGS = {
    "max_removed": 8, "orderings": ["bi", "angular", "reverse", "random"], "seed": 0, "batch_size": 4,
    "probe_windows": 1,
    "sublayers": False, "quantizers": ["rtn", "gptq"], "pruners": ["magnitude"], "ledger_bits": [3, 4, 8],
    "group": "g128",
}  # fmt: skip
"""StudySettings of the default run, sized for the 20-minute budget: removal levels 1..8 blocks by the four
orderings (BI, angular rule, reverse, random with seed 0), each block removed alone on 1 probe window, ledger
terms RTN/GPTQ at 3/4/8 bits (groups of 128) and magnitude pruning at the sparsity of every removal level."""
IMPORTANCE_SERIES = {
    "bi": ("Block Influence (block)", OKABE_ITO["blue"], "o"),
    "angular": ("angular distance, $n = 1$", OKABE_ITO["orange"], "s"),
    "attention": ("attention drop score", OKABE_ITO["bluish_green"], "^"),
    "mlp": ("MLP drop score", OKABE_ITO["vermillion"], "v"),
}
LineStyle = Callable[[Any], dict[str, Any]]
"""Plot keyword arguments of one series, from the value that names it."""
VERDICT_COLUMNS = ["ordering", "removed", "blocks", "bits_per_weight", "removal_sqnr_db", "range_low_db",
                   "range_high_db", "range_low_term", "range_high_term", "verdict", "margin_db", "perplexity",
                   "kl_to_reference_nats"]  # fmt: skip


def study_part(frame: pd.DataFrame, part: str) -> pd.DataFrame:
    """Rows of the stacked study table that belong to ``part``, without the columns other parts use."""
    rows = frame[frame["table"] == part].drop(columns="table").dropna(axis=1, how="all")
    return rows.reset_index(drop=True)


def study_parts(tables: Tables, *parts: str) -> tuple[pd.DataFrame, ...]:
    """The named parts (:func:`study_part`) of the study's stacked table in ``tables``, in the order named."""
    return tuple(study_part(tables[STUDY], part) for part in parts)


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


def synthetic_study(rng: np.random.Generator) -> pd.DataFrame:
    """A small stand-in for the stacked tables of :func:`measure.removal_study.run_study` (made-up values)."""
    blocks = 6
    influence = np.sort(rng.uniform(0.02, 0.3, blocks))[::-1]
    units = pd.DataFrame([
        {"unit": unit, "block": b, "influence": scale * x, "removal_relative_error": 2 * scale * x}
        for unit, scale in (("block", 1.0), ("attention", 0.4), ("mlp", 0.6)) for b, x in enumerate(influence)
    ])  # fmt: skip
    units = units.assign(removal_sqnr_db=-10 * np.log10(units["removal_relative_error"]), parameters=1000,
                         removed_fraction=1 / blocks, bits_per_weight=16 * (1 - 1 / blocks), rank=units["block"])
    angular = pd.DataFrame([{"n": n, "start": s, "angular_distance": 0.1 * n + 0.05 * s / blocks, "chosen": s == 0}
                            for n in (1, 2) for s in range(blocks - n + 1)])  # fmt: skip
    single = units[units["unit"] == "block"][["unit", "block", "influence", "removal_relative_error",
                                              "removal_sqnr_db", "parameters"]].assign(
        kl_to_reference_nats=lambda f: 0.5 * f["removal_relative_error"] * rng.uniform(0.5, 2, blocks),
        perplexity=lambda f: 20 * np.exp(f["kl_to_reference_nats"]), base_perplexity=20.0, nri=1e-6, windows=1)
    curves = pd.DataFrame([
        {"method": method, "term": f"{method}:{b}", "bits_per_weight": float(b), "relative_error": err,
         "output_sqnr_db": -10 * np.log10(err), "layers": 7 * blocks}
        for method, base in (("rtn", 0.5), ("gptq", 0.2)) for b, err in ((3, base), (4, base / 4), (8, base / 256))
    ] + [
        {"method": "magnitude", "term": f"magnitude:{k / blocks:.6f}", "bits_per_weight": 16 * (1 - k / blocks),
         "relative_error": 0.01 * k, "output_sqnr_db": -10 * np.log10(0.01 * k), "layers": 7 * blocks}
        for k in (1, 2)
    ])  # fmt: skip
    levels = []
    for ordering in ("bi", "angular"):
        for k in (1, 2):
            local = float(influence[-k:].sum() / influence.sum())
            sqnr = -10 * np.log10(local)
            low = curves[curves["bits_per_weight"] <= 16 * (1 - k / blocks) + 0.01]["output_sqnr_db"]
            levels.append({
                "ordering": ordering, "removed": k, "blocks": ",".join(map(str, range(blocks - k, blocks))),
                "removed_fraction": k / blocks, "bits_per_weight": 16 * (1 - k / blocks), "sparsity": k / blocks,
                "removal_relative_error": local, "removal_sqnr_db": sqnr, "perplexity": 20 + 10 * k,
                "kl_to_reference_nats": 0.3 * k, "range_low_db": low.min(), "range_high_db": low.max(),
                "range_low_term": "magnitude", "range_high_term": "gptq:8", "methods": 3,
                "verdict": "below" if sqnr < low.min() else "inside", "margin_db": min(sqnr - low.min(), 0.0),
            })  # fmt: skip
    levels = pd.DataFrame(levels)
    end_to_end = pd.concat([
        levels.assign(family="removal", method=levels["ordering"], spec="remove:blocks=" + levels["blocks"]),
        pd.DataFrame([{"family": "compression", "method": m, "spec": s, "removed_fraction": f,
                       "bits_per_weight": bits, "perplexity": 21.0 + f, "kl_to_reference_nats": 0.01 + f / 10}
                      for m, s, bits, f in (("magnitude", "magnitude:0.166667", 13.3, 1 / 6),
                                            ("rtn", "rtn:8:g128", 8.125, 1 / 6))]),
    ], ignore_index=True)[["family", "method", "spec", "removed", "removed_fraction", "bits_per_weight",
                           "perplexity", "kl_to_reference_nats"]]  # fmt: skip
    block_verdicts = units[units["unit"] == "block"][["block", "removed_fraction", "bits_per_weight",
                                                      "removal_sqnr_db"]].assign(verdict="below", margin_db=-20.0)
    base = pd.DataFrame([{"perplexity": 20.0, "kl_to_reference_nats": 0.0}])
    parts = {"units": units, "angular": angular, "single_units": single, "curves": curves,
             "block_verdicts": block_verdicts, "levels": levels, "end_to_end": end_to_end, "base": base}
    return stack_parts(parts)


@experiment(STUDY, needs_model=True, synthetic=synthetic_study, code=("measure",),
            config={"calibration": CALIBRATION, "evaluation": EVALUATION, "settings": SETTINGS})  # fmt: skip
def removal_study(config: Mapping[str, Any], context: ExperimentContext) -> pd.DataFrame:
    """:func:`measure.removal_study.run_study` on the loaded model with ``config["settings"]``, its tables
    stacked (:func:`stack_parts`) plus a ``base`` part holding the original model's perplexity."""
    from tqdm import tqdm

    from measure.removal_study import StudySettings, run_study

    loaded = context.model
    settings = dict(config["settings"])
    settings = StudySettings(**{**settings, "orderings": tuple(settings["orderings"]),
                                "quantizers": tuple(settings["quantizers"]), "pruners": tuple(settings["pruners"]),
                                "ledger_bits": tuple(settings["ledger_bits"])})  # fmt: skip
    study = run_study(loaded.model, calibration(loaded, config["calibration"]),
                      evaluation_windows(loaded, config["evaluation"]), settings,
                      log=lambda step: tqdm.write(f"removal_study: {step}"))  # fmt: skip
    return stack_parts({**study.tables, "base": pd.DataFrame([study.summary["base"]])})


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


def _removal_style(ordering: str) -> dict[str, Any]:
    """Line style of one removal ordering (:func:`figures.style.line_kwargs` of ``remove:<ordering>``)."""
    return line_kwargs(f"remove:{ordering}", "removal")


def _ledger_style(method: str) -> dict[str, Any]:
    """Line style of one ledger method, in the pruning or the quantization family."""
    return line_kwargs(method, "pruning" if method in ("magnitude", "wanda", "sparsegpt") else "quantization")


def _lines_over_bits(ax: Axes, rows: pd.DataFrame, by: str, column: str, style: LineStyle) -> None:
    """One line of ``column`` against bits per weight per value of ``by`` (sorted), styled by ``style(value)``."""
    for value, group in rows.groupby(by, sort=True):
        group = group.sort_values("bits_per_weight")
        ax.plot(group["bits_per_weight"], group[column], **style(value))


def _verdict_counts(levels: pd.DataFrame) -> str:
    counts = levels["verdict"].value_counts()
    return ", ".join(f"{int(n)} {escape_tex(v)}" for v, n in counts.items())


def _bounds_caption(tables: Tables, facts: Mapping[str, Any]) -> str:
    levels = study_part(tables[STUDY], "levels")
    return (
        "Decoder-level output SQNR of removing $n$ blocks (fraction $f$ of the decoder) at the bits per weight "
        "of equal compression $b(f) = 16(1-f)$, against the ledger's quantization and pruning curves (local "
        "error with original inputs, energy-weighted over layers; removal: block output energy lost). "
        f"Verdicts over {len(levels)} removal levels: {_verdict_counts(levels)}. {_settings_text(facts)}."
    )


@figure("removal_vs_bounds", needs=(STUDY,), caption=_bounds_caption, section=SECTION)
def removal_vs_bounds(tables: Tables) -> Figure:
    """Output SQNR [dB] vs bits per weight: one line per ledger method, one dotted series per removal ordering."""
    curves, levels = study_parts(tables, "curves", "levels")
    fig, ax = new_figure(height_ratio=0.6)
    _lines_over_bits(ax, curves, "method", "output_sqnr_db", _ledger_style)
    _lines_over_bits(ax, levels, "ordering", "removal_sqnr_db", _removal_style)
    ax.set_xlabel("bits per weight")
    ax.set_ylabel("output SQNR (dB)")
    method_legend(ax)
    return fig


def _verdict_table_caption(tables: Tables, facts: Mapping[str, Any]) -> str:
    levels = study_part(tables[STUDY], "levels")
    return (
        "Verdict per removal level: the removal's decoder-level SQNR against the SQNR range of the methods at "
        "their largest tabulated bits per weight not above $b(f)$ (ends of the range: the term named); margin = "
        "signed distance to the nearest end in dB (0 inside, negative below). PPL and KL on the evaluation "
        f"windows. {_verdict_counts(levels)}. {_settings_text(facts)}."
    )


@table("removal_verdicts", needs=(STUDY,), caption=_verdict_table_caption, section=SECTION)
def removal_verdicts(tables: Tables) -> Styler:
    """One row per (ordering, n removed): b(f), removal SQNR, the methods' range, verdict, margin, PPL, KL."""
    levels = study_part(tables[STUDY], "levels").sort_values(["ordering", "removed"])
    levels["removed"] = levels["removed"].astype(int)
    labels = {"ordering": "Ordering", "removed": "$n$", "blocks": "Blocks", "bits_per_weight": "$b(f)$",
              "removal_sqnr_db": "Removal [dB]", "range_low_db": "Low [dB]", "range_high_db": "High [dB]",
              "verdict": "Verdict", "margin_db": "Margin [dB]", "perplexity": "PPL",
              "kl_to_reference_nats": "KL [nats/token]"}  # fmt: skip
    return thesis_table(levels, labels, precision=2)


def _propagation_caption(tables: Tables, facts: Mapping[str, Any]) -> str:
    from measure.removal_study import propagation_correlation

    frame = tables[STUDY]
    parts = []
    for name, label in (("single_units", "single blocks"), ("levels", "removal sets")):
        rows = study_part(frame, name)
        if name == "single_units":
            rows = rows[rows["unit"] == "block"]
        corr = propagation_correlation(rows["removal_relative_error"], rows["kl_to_reference_nats"])
        parts.append(f"{label}: Pearson $r = {corr['pearson_log10']:.2f}$ of the logs, Spearman "
                     f"$\\rho = {corr['spearman']:.2f}$ ($n = {corr['n']}$)")  # fmt: skip
    single = study_part(frame, "single_units")
    return (
        "Error propagation: local removal error vs end-to-end KL to the original model, (a) each block alone "
        "(error over its own output energy), (b) the removal sets (error over the decoder's block output energy); "
        f"{'; '.join(parts)}. Single blocks on {int(single['windows'].iloc[0])} probe window(s). "
        f"{_settings_text(facts)}."
    )


@figure("error_propagation", needs=(STUDY,), caption=_propagation_caption, section=SECTION)
def error_propagation(tables: Tables) -> Figure:
    """KL [nats/token] vs local relative error, log–log: (a) each block alone (error relative to its own output
    energy), (b) each ordering's removal sets (error relative to the decoder's block output energy)."""
    single, levels = study_parts(tables, "single_units", "levels")
    single = single[single["unit"] == "block"]
    fig, (alone, sets) = new_figure(ncols=2, height_ratio=0.45)
    alone.scatter(single["removal_relative_error"], single["kl_to_reference_nats"], color=OKABE_ITO["black"],
                  marker="o", s=10, label="one block removed")  # fmt: skip
    for ordering, rows in levels.groupby("ordering", sort=True):
        kwargs = _removal_style(ordering)
        sets.scatter(rows["removal_relative_error"], rows["kl_to_reference_nats"], color=kwargs["color"],
                     marker=kwargs["marker"], s=14, label=kwargs["label"])  # fmt: skip
    labels = (("a", "block error / its output energy"), ("b", "removed error / decoder output energy"))
    for ax, (letter, xlabel) in zip((alone, sets), labels, strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"local removal error ({xlabel})", fontsize="small")
        ax.set_ylabel("KL (nats/token)")
        ax.set_title(f"({letter})", loc="left", fontsize="small")
        method_legend(ax)
    return fig
