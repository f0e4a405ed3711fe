"""Structured width pruning at equal size with BI block removal and SparseGPT: the ``width_pruning`` table.

The experiment runs :func:`measure.studies.grids.width_pruning_grid` on the default model: 10, 25 and 50 % of
every MLP's channels and 1 and 2 of its 3 KV groups (each with its 3 query heads: the GQA structure survives),
each with and without the consumers' refit, beside BI removal of the nearest size and SparseGPT of exactly the
same size (free mask). Its selections and SparseGPT runs take longer than the ``make figures`` budget on 2 CPU
cores, so the table is opt-in: ``pvq figures --only width_pruning`` or
``pvq run pvq/scale/experiment_files/width_pruning.toml --executor local``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from pandas.io.formats.style import Styler

from figures.answers import answer, held_out_scale, indistinguishable, prose
from figures.catalog.models import calibration, describe_protocol, evaluation_windows
from figures.experiments import ExperimentContext, experiment
from figures.registry import Tables, escape_tex, table
from figures.style import thesis_table
from measure.removal.stacked import STUDY_TABLE as STUDY
from measure.removal.stacked import study_part
from measure.removal.width import COLUMNS
from measure.removal.width_options import AS_REQUESTED, measured_options, width_options_table
from measure.studies.grids import width_pruning_grid

SECTION = "Structured width pruning"
WIDTH = "width_pruning"
OPTIONS = ("mlp=0.1", "mlp=0.25", "mlp=0.5", "heads=0.34", "heads=0.67")
"""10, 25, 50 % of the MLP channels; 1 and 2 of 3 KV groups (round(0.34·3) = 1, round(0.67·3) = 2)."""
WIDTH_CALIBRATION = {"sequences": 16, "sequence_length": 512, "batch_size": 4, "mode": "parallel"}
WIDTH_EVALUATION = {"window": 512, "max_windows": 8}
"""The protocol cut to fit about 20 minutes on 2 CPU cores: 16 calibration windows of 512 tokens (8192 tokens) and
the first 8 evaluation windows of 512 tokens (4096 held-out tokens); ``pvq eval`` by default calibrates on 128
windows and scores every window."""


def synthetic_width(rng: np.random.Generator) -> pd.DataFrame:
    """A small stand-in for :func:`width_pruning` (same columns, made-up values)."""
    rows = []
    for option, fraction in (("mlp=0.25", 0.19), ("heads=0.34", 0.08)):
        series, bits = f"shrink_{option.split('=')[0]}", 16 * (1 - fraction)
        kl = rng.uniform(0.1, 0.6, 4)
        rows += [
            (series, f"shrink:{option}", option, True, fraction, bits, 0.0, np.nan, kl[0]),
            (f"{series}_norefit", f"shrink:{option}:norefit", option, False, fraction, bits, 0.0, np.nan, kl[1]),
            ("remove:bi", "remove:blocks=3,4", option, None, fraction + 0.01, bits - 0.16, -0.16, np.nan, kl[2]),
            ("sparsegpt", "sparsegpt:0.25", option, None, fraction, bits, 0.0, fraction * 1.1, kl[3]),
        ]  # fmt: skip
    frame = pd.DataFrame(rows, columns=[*COLUMNS[:8], "kl_to_reference_nats"])
    kl = frame["kl_to_reference_nats"]
    intervals = {"kl_to_reference_nats_ci_low": 0.9 * kl, "kl_to_reference_nats_ci_high": 1.1 * kl,
                 "perplexity_ci_low": 20.0 * np.exp(0.9 * kl), "perplexity_ci_high": 20.0 * np.exp(1.1 * kl),
                 "same_top_rate": 0.8, "kl_p99": 5 * kl, "tokens": 4088}  # fmt: skip
    return frame.assign(perplexity=20.0 * np.exp(kl), base_perplexity=20.0, **intervals)[COLUMNS]


@experiment(WIDTH, needs_model=True, synthetic=synthetic_width,
            config={"options": list(OPTIONS), "calibration": WIDTH_CALIBRATION, "evaluation": WIDTH_EVALUATION})
def width_pruning(config: Mapping[str, Any], context: ExperimentContext) -> pd.DataFrame:
    """:func:`measure.studies.grids.width_pruning_grid` on the loaded model with ``config``'s options, each as
    the model takes it (:mod:`measure.removal.width_options`, checked before the calibration batches are read: an
    option left out is reported with its reason and has no rows)."""
    loaded = context.model
    widths = width_options_table(loaded.model, config["options"])
    for row in widths[widths["status"] != AS_REQUESTED].itertuples():
        context.step(f"width option {row.option}: {row.status} ({row.reason})")
    return width_pruning_grid(loaded.model, calibration(loaded, config["calibration"]),
                              evaluation_windows(loaded, config["evaluation"]), measured_options(widths),
                              config["calibration"]["mode"], config["calibration"]["batch_size"],
                              log=context.step)  # fmt: skip


METHOD_NAMES = {"remove:bi": "BI removal", "sparsegpt": "SparseGPT (free mask)"}


def width_display(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of the ``width_pruning`` table: per option, the shrink with and without refit, then its equal-size
    comparisons."""
    def name(row: pd.Series) -> str:
        if row["method"].startswith("shrink"):
            return f"{row['spec'].removeprefix('shrink:').replace(':norefit', '')}, " + (
                "refit" if row["refit"] else "no refit")
        return METHOD_NAMES.get(row["method"], row["method"])

    columns = ["kl_to_reference_nats", "kl_to_reference_nats_ci_low", "kl_to_reference_nats_ci_high"]
    kl = [f"{k:.3f} [{lo:.3f}, {hi:.3f}]" for k, lo, hi in frame[columns].to_numpy()]
    return frame.assign(variant=frame.apply(name, axis=1), gap=frame["size_gap_bits"].where(
        frame["size_gap_bits"] != 0), kl_interval=kl)  # fmt: skip


def _caption(tables: Tables, facts: Mapping[str, Any]) -> str:
    base = float(tables[WIDTH]["base_perplexity"].iloc[0])
    return (
        "Structured width pruning against BI block removal and SparseGPT at equal size, end to end: perplexity "
        "and KL to the original (nats/token, with its 95 \\% block-bootstrap interval). mlp=$F$: the fraction $F$ "
        "of every MLP's channels removed; "
        "heads=$F$: round$(3F)$ of the 3 KV groups of every attention, each with its query heads; refit: the "
        "consumers' kept columns refit by least squares. Size $b$ in bits per decoder parameter, $16(1-f)$ for a "
        "removed fraction $f$ of the decoder (no mask: the model is smaller); BI removal of the nearest size "
        "(gap: its size minus the shrink's), SparseGPT at exactly the same size with a free mask. Original "
        f"perplexity {base:.2f}. {escape_tex(facts['model_id'])}; {describe_protocol(facts['protocol'][WIDTH])}."
    )


@table(WIDTH, needs=(WIDTH,), caption=_caption, section=SECTION, default=False)
def width_pruning_table(tables: Tables) -> Styler:
    """One row per variant: size, size gap, sparsity, PPL and KL."""
    shown = width_display(tables[WIDTH])
    labels = {"variant": "Variant", "bits_per_decoder_parameter": "$b$", "gap": "Gap", "sparsity": "$s$",
              "perplexity": "PPL", "kl_interval": "KL [95 \\% CI]"}  # fmt: skip
    return thesis_table(shown, labels, precision=3)


def option_words(option: str) -> str:
    """A width option in words: ``mlp=0.25`` → "25 % of every MLP's channels", ``heads=0.34`` → "34 % of every
    attention's key--value groups" (LaTeX)."""
    kind, _, value = option.split(":")[0].partition("=")
    what = {"mlp": "every MLP's channels", "heads": "every attention's key--value groups"}.get(kind, kind)
    return f"{100 * float(value):.0f} \\% of {what}"


def width_against_depth(frame: pd.DataFrame) -> pd.DataFrame:
    """Per width option: the shrink with refit against BI block removal of the nearest size, each KL with its 95 %
    interval, and the ``outcome`` for the narrower model: ``less`` / ``more`` damage when the two intervals do not
    overlap, else ``indistinguishable`` (the table holds no paired interval, so non-overlap is the test)."""
    rows = []
    for option, group in frame.groupby("matched_to", sort=False):
        shrink = group[group["method"].str.startswith("shrink") & group["refit"].fillna(False).astype(bool)]
        removal = group[group["method"] == "remove:bi"]
        if shrink.empty or removal.empty:
            continue
        width, depth = shrink.iloc[0], removal.iloc[0]
        low, high = "kl_to_reference_nats_ci_low", "kl_to_reference_nats_ci_high"
        outcome = ("less" if width[high] < depth[low] else "more" if width[low] > depth[high] else
                   "indistinguishable")  # fmt: skip
        rows.append({"option": option, "width_kl": width["kl_to_reference_nats"], "width_low": width[low],
                     "width_high": width[high], "depth_kl": depth["kl_to_reference_nats"], "depth_low": depth[low],
                     "depth_high": depth[high], "size_gap_bits": depth["size_gap_bits"], "outcome": outcome,
                     "tokens": width.get("tokens", np.nan)})  # fmt: skip
    return pd.DataFrame(rows)


def width_answer(tables: Tables) -> str:
    """Width against depth in plain words: per width option, the narrower model against BI removal of the nearest
    size (:func:`width_against_depth`), each KL with its interval, and how many options each wins."""
    compared = width_against_depth(tables[WIDTH])
    if compared.empty:
        return ""
    tokens = compared["tokens"].iloc[0]
    counts = compared["outcome"].value_counts()
    less, more = int(counts.get("less", 0)), int(counts.get("more", 0))
    lead = ("Narrower" if less and not more else "Fewer blocks" if more and not less else
            "Not resolved" if not less else "It depends on the size")  # fmt: skip
    details = "; ".join(
        f"removing {option_words(row.option)}: {row.width_kl:.3f} nats/token (95 \\% interval {row.width_low:.3f} "
        f"to {row.width_high:.3f}) against {row.depth_kl:.3f} ({row.depth_low:.3f} to {row.depth_high:.3f})"
        for row in compared.itertuples())  # fmt: skip
    return (
        f"{lead}: making every layer narrower (the rest refit) damages the model less than removing whole blocks "
        f"of about the same size for {less} of {len(compared)} sizes, more for {more}, and is "
        f"{indistinguishable(tokens)} for {int(counts.get('indistinguishable', 0))}, judged by the extra KL to "
        f"the original and called only where the two 95 \\% intervals do not overlap ({held_out_scale(tokens)}). "
        f"Measured: {details}."
    )


def width_against_depth_in_study(study: pd.DataFrame) -> pd.DataFrame:
    """Per width option the removal study evaluates end to end (``width`` family): the nearest BI block removals
    evaluated end to end that remove at most (``below_*``) and at least (``above_*``) its share of the decoder,
    each KL [nats/token] with its 95 % interval, and the ``outcome`` for the narrower model by dominance, which
    needs no interpolation between sizes: ``less`` damage when it removes at least as much as some BI removal and
    its KL interval lies wholly below that removal's, ``more`` when some BI removal removes at least as much and
    lies wholly below it, else ``unresolved`` (the two removals bracket it and neither dominates)."""
    rows = study_part(study, "end_to_end")
    rows = rows[rows["kl_to_reference_nats"].notna()]
    low, high = "error_ci_low", "error_ci_high"
    bi = rows[(rows["family"] == "removal") & (rows["method"] == "bi")].sort_values("removed_fraction")
    found = []
    for width in rows[rows["family"] == "width"].itertuples():
        fraction, width_low, width_high = width.removed_fraction, getattr(width, low), getattr(width, high)
        below = bi[bi["removed_fraction"] <= fraction]
        above = bi[bi["removed_fraction"] >= fraction]
        less = bool((below[low] > width_high).any())
        more = bool((above[high] < width_low).any())
        outcome = "less" if less and not more else "more" if more and not less else "unresolved"
        row = {"option": str(width.spec).removeprefix("shrink:"), "removed_fraction": fraction,
               "kl": width.kl_to_reference_nats, "low": width_low, "high": width_high, "outcome": outcome,
               "tokens": width.tokens}  # fmt: skip
        for side, chosen in (("below", below.tail(1)), ("above", above.head(1))):
            pick = chosen.iloc[0] if len(chosen) else None
            row |= {f"{side}_{key}": (np.nan if pick is None else pick[column]) for key, column in
                    (("blocks", "removed"), ("fraction", "removed_fraction"), ("kl", "kl_to_reference_nats"),
                     ("low", low), ("high", high))}  # fmt: skip
        found.append(row)
    return pd.DataFrame(found)


def _removal_words(row: Any, side: str) -> str:
    blocks = getattr(row, f"{side}_blocks")
    if pd.isna(blocks):
        return ""
    kl, low, high = (getattr(row, f"{side}_{key}") for key in ("kl", "low", "high"))
    count = f"{int(blocks)} block" + ("" if int(blocks) == 1 else "s")
    return f"{count} ({100 * getattr(row, f'{side}_fraction'):.1f} \\%): {kl:.3f} ({low:.3f} to {high:.3f})"


@answer(SECTION, needs=(STUDY,), question="Narrower layers, or fewer blocks?")
def width_depth_answer(tables: Tables) -> str:
    """Width against depth from the default run: the removal study's width options (fewer KV groups; fewer MLP
    channels, Wanda score, refit) against the BI block removals evaluated end to end around their size
    (:func:`width_against_depth_in_study`), called by dominance only."""
    compared = width_against_depth_in_study(tables[STUDY])
    if compared.empty:
        return "The default run evaluated no width option end to end, so this question has no answer here."
    tokens = compared["tokens"].iloc[0]
    counts = compared["outcome"].value_counts()
    less, more, unresolved = (int(counts.get(key, 0)) for key in ("less", "more", "unresolved"))
    lead = ("Narrower layers" if less and not more and not unresolved else
            "Fewer blocks" if more and not less and not unresolved else
            "Not resolved at the sizes measured" if not less and not more else
            "It depends on the option")  # fmt: skip
    details = "; ".join(
        f"removing {option_words(row.option)} ({100 * row.removed_fraction:.1f} \\% of the decoder): "
        f"{row.kl:.3f} nats/token ({row.low:.3f} to {row.high:.3f}), against BI removal of "
        + " and ".join(text for text in (_removal_words(row, "below"), _removal_words(row, "above")) if text)
        for row in compared.itertuples())  # fmt: skip
    return (
        f"{lead}: of {len(compared)} way{'' if len(compared) == 1 else 's'} of making every block narrower, "
        f"{less} damage the model less than "
        "removing whole blocks that take out no more of it, "
        f"{more} damage it more than removing blocks that take out at least as much, and {unresolved} lie between "
        "the two nearest block removals without either dominating (extra KL to the original, 95 \\% intervals "
        f"that do not overlap; {held_out_scale(tokens)}). Measured: {details}."
    )


@prose(SECTION, needs=(WIDTH,))
def width_prose(tables: Tables) -> str:
    """The section's opening paragraph: the width answer, the size gaps of the removal it is compared with, and the
    threats to validity."""
    frame = tables[WIDTH]
    compared = width_against_depth(frame)
    gap = float(compared["size_gap_bits"].abs().max()) if len(compared) else float("nan")
    return (
        "Instead of removing whole blocks, a model can be made narrower: fewer MLP channels or fewer attention "
        f"groups in every block. {width_answer(tables)} The removal compared is that of the nearest size, at most "
        f"{gap:.2f} bits per decoder parameter away. Threats to validity: the two models' intervals are not "
        "paired, so a difference is called only where they do not overlap, which is conservative; the protocol is "
        "cut to fit the machine (fewer calibration and evaluation windows than the other sections); one small "
        "model."
    )
