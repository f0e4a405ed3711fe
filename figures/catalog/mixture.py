"""The optimal mixture: per-layer allocation of pruning and quantization under a size budget, measured end to end.

``mixture_frontier`` runs :func:`measure.studies.mixture_frontier.mixture_frontier_table` on the default protocol:
the menu :data:`MENU` measured once, the exact allocation at every budget B (bits per weight over the decoder's
linear weights) for the KL sensitivity (and at a few budgets for the output-energy sensitivity and for the menu
without block removal), each installed and scored on the pinned evaluation windows with the original as KL
reference. Every compressing option of the menu is also applied uniformly, and allocated at exactly its size, so
each uniform spec meets an allocation of the same size from the same options (like with like).

The default menu is data-free (RTN in groups of 128, magnitude pruning, magnitude then RTN, whole-block removal) so
that the experiment fits the time budget of ``make figures`` (a capture, the menu's ledger, one KL probe per linear
layer and per block, and about twenty-five evaluations); the calibrated menu (GPTQ, AWQ, SparseGPT;
:data:`measure.mixture.menu.FULL_MENU`) runs with ``pvq allocate``.
The allocation is optimal for the *predicted* damage Σ_ℓ c_ℓ·e_ℓ only; the prediction is checked against the
measured KL (Spearman ρ, Pearson r of the logs) over every evaluated allocation and uniform spec.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pandas.io.formats.style import Styler
from scipy import stats

from figures.answers import answer, held_out_scale, indistinguishable, prose
from figures.catalog.models import CALIBRATION, EVALUATION, calibration, describe_protocol, evaluation_windows
from figures.experiments import ExperimentContext, experiment
from figures.labels import spec_label
from figures.registry import Tables, escape_tex, figure, table
from figures.style import OKABE_ITO, interval_bars, new_figure, thesis_table
from measure.data.text import calibration_text
from measure.evaluation.protocols import EvaluationProtocol
from measure.mixture.menu import KEEP, REMOVE, parse_menu
from measure.studies.mixture_frontier import COLUMNS, PAIRED_COLUMNS, TOLERANCE, allocation_frontier_table

SECTION = "The optimal mixture"
MIXTURE = "mixture_frontier"
MENU = "keep,rtn:2:g128,rtn:3:g128,rtn:4:g128,rtn:6:g128,rtn:8:g128,magnitude:0.5,magnitude:0.5+rtn:4:g128,remove"
"""The figures' menu: 16-bit; RTN in groups of 128 at 2, 3, 4, 6 and 8 bits; magnitude pruning at 50 % (free mask);
magnitude 50 % then RTN 4-bit; whole decoder blocks removed. Data-free, so applying an allocation costs no
calibration pass."""
BUDGETS = (3.0,)
"""Budgets allocated besides the size of every uniform menu option (which gives allocations at about 2.1, 3.1,
4.1, 6.1 and 8 bits per weight)."""
SIZE = "bits_per_linear_weight"
"""The size column of the mixture tables: bits per linear weight of the decoder blocks (removed blocks' at 0
bits, the weights a menu option leaves uncompressed at 16)."""
ENERGY_BUDGETS = (3.0,)
"""Budgets also allocated with the energy sensitivity, and with the menu without ``remove``."""
PROBE_WINDOWS = {"window": 128, "max_windows": 1}
"""The KL sensitivity's single-layer probes are scored on the first 128 tokens of the calibration text (one probe
per linear layer; c_ℓ is calibrated on calibration data, never on the evaluation windows it is judged on)."""
HATCHES = ("", "////", "....")
"""Hatching of the spending categories of panel (b): none for the palette's first pass, then these."""


def synthetic_mixture(rng: np.random.Generator) -> pd.DataFrame:
    """A small stand-in for :func:`mixture_frontier` (same columns, made-up values)."""
    rows = []
    uniform = {"rtn:2:g128": 2.125, "rtn:3:g128": 3.125, "rtn:4:g128": 4.125, "magnitude:0.5": 8.0}
    plan = [("kl", "", b) for b in dict.fromkeys((*BUDGETS, *uniform.values()))]
    plan += [(kind, "", b) for kind in ("energy", "kl_without_removal") for b in ENERGY_BUDGETS]
    plan += [("uniform", spec, b) for spec, b in uniform.items()]
    for kind, spec, budget in plan:
        share = float(rng.uniform(0.3, 0.9))
        split = {spec: 1.0} if spec else {"rtn:3:g128": share, "magnitude:0.5+rtn:4:g128": (1 - share) / 3,
                                          "keep": (1 - share) / 3, "remove": (1 - share) / 3}  # fmt: skip
        kl = float(np.exp(-budget) * rng.uniform(0.8, 1.2 if kind != "uniform" else 2.0))
        spent = budget - 0.01 * (not spec)
        rows.append({"sensitivity": kind, "spec": spec, "budget": budget, "bits_per_linear_weight": spent,
                     "predicted_damage": kl * (1.1 if kind != "energy" else 0.01), "predicted_kl_nats": kl * 1.1,
                     "lagrangian_lower_bound": math.nan if spec else kl, "split": json.dumps(split),
                     "removed_blocks": "" if spec else "3,7", "perplexity": 20 + 40 * kl,
                     "kl_to_reference_nats": kl, "base_perplexity": 20.0, "menu": MENU,
                     **synthetic_intervals(rng, kl)})  # fmt: skip
    frame = pd.DataFrame(rows)
    return frame.assign(**{column: math.nan for column in PAIRED_COLUMNS})[COLUMNS]


def synthetic_intervals(rng: np.random.Generator, kl: float) -> dict[str, float]:
    """Made-up interval columns around ``kl`` (:data:`measure.evaluation.perplexity.INTERVAL_COLUMNS`)."""
    spread = kl * float(rng.uniform(0.05, 0.2))
    return {"kl_to_reference_nats_ci_low": kl - spread, "kl_to_reference_nats_ci_high": kl + spread,
            "perplexity_ci_low": 20 + 40 * (kl - spread), "perplexity_ci_high": 20 + 40 * (kl + spread),
            "same_top_rate": 0.9, "kl_p99": 10 * kl, "tokens": 4088}  # fmt: skip


@experiment(MIXTURE, needs_model=True, synthetic=synthetic_mixture,
            config={"menu": MENU, "budgets": list(BUDGETS), "energy_budgets": list(ENERGY_BUDGETS),
                    "probe": PROBE_WINDOWS, "calibration": CALIBRATION, "evaluation": EVALUATION})  # fmt: skip
def mixture_frontier(config: Mapping[str, Any], context: ExperimentContext) -> pd.DataFrame:
    """One row per evaluated model (:data:`measure.studies.mixture_frontier.KINDS`;
    :func:`measure.studies.mixture_frontier.allocation_frontier_table`): bits spent, predicted damage (own units;
    and predicted KL), Lagrangian lower bound, the split of the weights over the options (JSON), the removed
    blocks, PPL and KL to the original."""

    loaded = context.model
    return allocation_frontier_table(loaded.model, calibration(loaded, config["calibration"]),
                                     evaluation_windows(loaded, config["evaluation"]),
                                     probe_windows(loaded, config["probe"]), config["menu"], config["budgets"],
                                     config["energy_budgets"], config["calibration"]["batch_size"],
                                     log=context.step)  # fmt: skip


def probe_windows(loaded: Any, config: Mapping[str, Any]) -> Any:
    """The first ``max_windows`` windows of ``window`` tokens of the calibration text (:data:`PROBE_WINDOWS`)."""

    return EvaluationProtocol(config["window"], config["max_windows"]).windows(loaded, calibration_text)


def comparison(tables: Tables) -> pd.DataFrame:
    """The KL-sensitivity allocations by budget, each with the best uniform spec of the menu whose size is at most
    the budget (``uniform_*`` columns) and whether that size equals the budget (``equal_size``)."""
    frame = tables[MIXTURE]
    rows = frame[frame["sensitivity"] == "kl"].sort_values("budget").reset_index(drop=True)
    uniform = frame[frame["sensitivity"] == "uniform"]
    extra = []
    for budget in rows["budget"]:
        fits = uniform[uniform[SIZE] <= budget + TOLERANCE]
        best = None if fits.empty else fits.loc[fits["kl_to_reference_nats"].idxmin()]
        extra.append({
            "uniform_spec": "" if best is None else str(best["spec"]),
            "uniform_bits_per_linear_weight": math.nan if best is None else float(best[SIZE]),
            "uniform_perplexity": math.nan if best is None else float(best["perplexity"]),
            "uniform_kl_nats": math.nan if best is None else float(best["kl_to_reference_nats"]),
            "equal_size": best is not None and abs(float(best[SIZE]) - budget) <= TOLERANCE,
        })  # fmt: skip
    return pd.concat([rows, pd.DataFrame(extra, index=rows.index)], axis=1)


def prediction_check(frame: pd.DataFrame) -> tuple[float, float, int]:
    """Spearman ρ and Pearson r of log predicted KL vs log measured KL over every evaluated model, and n."""
    usable = frame[(frame["predicted_kl_nats"] > 0) & (frame["kl_to_reference_nats"] > 0)]
    if len(usable) < 3:
        return math.nan, math.nan, len(usable)
    predicted, measured = np.log(usable["predicted_kl_nats"]), np.log(usable["kl_to_reference_nats"])
    rho = float(stats.spearmanr(predicted, measured).statistic)
    return rho, float(stats.pearsonr(predicted, measured).statistic), len(usable)


def option_kind(option: str) -> str:
    """``keep``, ``removal`` (whole blocks), or the menu option's method kind: ``quantization``, ``pruning`` or
    ``joint``."""

    if option in (KEEP, REMOVE):
        return KEEP if option == KEEP else "removal"
    return parse_menu(option)[0].step.method.kind


def split_categories(split: Mapping[str, float]) -> dict[str, float]:
    """Fractions of the weights by how they are spent: kept (16-bit), quantized per bit width, pruned, pruned and
    quantized per bit width."""

    categories: dict[str, float] = {}
    for option, share in split.items():
        kind = option_kind(option)
        if kind == KEEP:
            name = "kept (16-bit)"
        elif kind == "removal":
            name = "removed (whole blocks)"
        else:
            params = parse_menu(option)[0].step.params
            bits = params.get("bits") or params.get("quantize", {}).get("bits")
            name = {"quantization": f"quantized {bits}-bit", "pruning": "pruned",
                    "joint": f"pruned + quantized {bits}-bit"}[kind]  # fmt: skip
        categories[name] = categories.get(name, 0.0) + share
    return categories


PAIR_COLUMNS = ["bits_per_linear_weight", "spec", "kind", "uniform_kl_nats", "kl_to_reference_nats",
                *PAIRED_COLUMNS, "outcome"]  # fmt: skip


def equal_size_pairs(tables: Tables) -> pd.DataFrame:
    """One row per uniform menu option whose size some KL allocation's budget equals exactly: the size, the
    option (``spec``, its ``kind``) and KL, the allocation's KL (same size, same menu, same tokens), the paired
    difference allocation − option with its interval, and the ``outcome`` for the allocation: ``lower`` /
    ``higher`` KL when the interval excludes 0, else ``indistinguishable``."""
    frame = tables[MIXTURE]
    allocations = frame[frame["sensitivity"] == "kl"]
    rows = []
    for uniform in frame[frame["sensitivity"] == "uniform"].itertuples():
        same = allocations[(allocations["budget"] - uniform.bits_per_linear_weight).abs() <= TOLERANCE]
        if not same.empty:
            low, high = (float(getattr(uniform, c, math.nan)) for c in PAIRED_COLUMNS[1:])
            outcome = "lower" if high < 0 else "higher" if low > 0 else "indistinguishable"
            rows.append({"bits_per_linear_weight": float(uniform.bits_per_linear_weight), "spec": uniform.spec,
                         "kind": option_kind(uniform.spec), "uniform_kl_nats": float(uniform.kl_to_reference_nats),
                         "kl_to_reference_nats": float(same["kl_to_reference_nats"].iloc[0]),
                         "paired_kl_difference": float(getattr(uniform, "paired_kl_difference", math.nan)),
                         "paired_kl_difference_ci_low": low, "paired_kl_difference_ci_high": high,
                         "outcome": outcome})  # fmt: skip
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def _sizes(values: pd.Series) -> str:
    return ", ".join(f"{b:.3f}" for b in sorted(values)) or "none"


def _verdict(tables: Tables) -> str:
    """Like with like, and only what the intervals resolve: the allocation against each uniform quantization of
    exactly its size (lower / higher KL when the 95 % paired interval of the difference excludes 0, else
    indistinguishable), and against every uniform option of that size."""
    pairs = equal_size_pairs(tables)
    quantization = pairs[pairs["kind"] == "quantization"]
    if quantization.empty:
        return "No uniform quantization of the menu was measured at an allocated size, so no verdict is drawn."
    counts = {outcome: quantization[quantization["outcome"] == outcome] for outcome in
              ("lower", "higher", "indistinguishable")}  # fmt: skip
    by_size = pairs.groupby(SIZE)["outcome"].agg(lambda o: bool((o == "lower").all()))
    tokens = tables[MIXTURE]["tokens"].dropna() if "tokens" in tables[MIXTURE] else pd.Series(dtype=float)
    scale = f" over {int(tokens.iloc[0])} held-out tokens" if len(tokens) else ""
    return (
        "At exactly the size of each uniform quantization of the menu, the optimal mixture has lower KL than that "
        f"quantization at {len(counts['lower'])} of {len(quantization)} sizes "
        f"({_sizes(counts['lower'][SIZE])} bits per weight), higher KL at {len(counts['higher'])} "
        f"({_sizes(counts['higher'][SIZE])}) and is indistinguishable at "
        f"{len(counts['indistinguishable'])} ({_sizes(counts['indistinguishable'][SIZE])}; 95 % "
        f"paired block-bootstrap intervals{scale}); it has lower KL than every uniform menu option of the same "
        f"size, resolved by the intervals, at {int(by_size.sum())} of {len(by_size)} sizes "
        f"({_sizes(by_size[by_size].index)})."
    )


@answer(SECTION, needs=(MIXTURE,), question="A mixture chosen layer by layer, or one method everywhere?")
def mixture_answer(tables: Tables) -> str:
    """Is there a better mixture of pruning, quantization and removal than one method everywhere? In plain words:
    at how many sizes the allocation beats, loses to or cannot be told from the uniform quantization of exactly its
    size (95 % paired intervals, :func:`equal_size_pairs`)."""
    pairs = equal_size_pairs(tables)
    quantization = pairs[pairs["kind"] == "quantization"]
    tokens = tables[MIXTURE]["tokens"].dropna().iloc[0] if "tokens" in tables[MIXTURE] else None
    scale = held_out_scale(tokens)
    if quantization.empty:
        return f"Not resolved: no uniform quantization was measured at an allocated size ({scale})."
    counts = quantization["outcome"].value_counts()
    lower, higher = int(counts.get("lower", 0)), int(counts.get("higher", 0))
    lead = ("A mixture" if lower and not higher else "One method" if higher and not lower else
            "Not resolved" if not lower else "It depends on the size")  # fmt: skip
    tied = int(counts.get("indistinguishable", 0))
    return (
        f"{lead}: choosing per layer between quantization, pruning and removing whole blocks damages the model "
        f"less than quantizing every layer alike to exactly the same size at {lower} of {len(quantization)} "
        f"sizes, more at {higher}, and is {indistinguishable(tokens)} at {tied} (95 \\% paired intervals of the "
        f"difference; {scale})."
    )


@prose(SECTION, needs=(MIXTURE,))
def mixture_prose(tables: Tables) -> str:
    """The section's opening paragraph: the question, the verdict, how well the prediction ranks the models, and
    the threats to validity, every number from the table."""
    frame = tables[MIXTURE]
    kinds = frame["sensitivity"].value_counts()
    tokens = frame["tokens"].dropna() if "tokens" in frame else pd.Series(dtype=float)
    scale = f"{int(tokens.iloc[0])} held-out tokens" if len(tokens) else "the held-out evaluation windows"
    return (
        "Is there a mixture of pruning, quantization and block removal, chosen layer by layer, that beats one "
        f"method applied everywhere at the same size? {int(kinds.get('kl', 0))} allocations solved exactly for "
        f"the predicted damage and {int(kinds.get('uniform', 0))} uniform options of the menu were evaluated on "
        f"{scale}. {escape_tex(_verdict(tables))} {escape_tex(_removal_text(tables))} {_prediction_text(tables)} "
        "Threats to validity: "
        "the default menu is data-free (RTN, magnitude pruning, both, block removal), so the calibrated methods "
        "of the full menu may move the verdict; the allocation is optimal for the predicted damage, not for "
        "the measured KL; one small model."
    )


def _removal_text(tables: Tables) -> str:
    """Where the KL allocations remove blocks, and KL with vs without ``remove`` in the menu at equal budgets."""
    frame = tables[MIXTURE]
    kl = frame[frame["sensitivity"] == "kl"].drop_duplicates("budget").set_index("budget")
    without = frame[frame["sensitivity"] == "kl_without_removal"].drop_duplicates("budget").set_index("budget")
    removing = kl[kl["removed_blocks"].fillna("").astype(str) != ""]
    used = (
        "The KL allocations remove blocks at "
        + ", ".join(f"{b:g} (blocks {removing.at[b, 'removed_blocks']})" for b in removing.index)
        + " bits per weight"
        if len(removing)
        else "The KL allocations remove no block at any budget"
    )
    pairs = [f"{b:g}: {kl.at[b, 'kl_to_reference_nats']:.3g} vs {without.at[b, 'kl_to_reference_nats']:.3g}"
             for b in without.index if b in kl.index]  # fmt: skip
    if not pairs:
        return used + "."
    return f"{used}; KL with vs without removal in the menu, by budget: {'; '.join(pairs)}."


def _prediction_text(tables: Tables) -> str:
    rho, r, n = prediction_check(tables[MIXTURE])
    return (
        "The allocation is optimal for the predicted damage only; predicted ($\\sum_\\ell c_\\ell e_\\ell$ "
        f"with the KL sensitivity) vs measured KL over all {n} evaluated models: Spearman $\\rho$ = {rho:.2f}, "
        f"Pearson $r$ of the logs = {r:.2f}."
    )


def _mixture_caption(tables: Tables, facts: Mapping[str, Any]) -> str:
    menu = escape_tex(tables[MIXTURE]["menu"].iloc[0].replace(",", ", "))
    probe = facts["protocol"][MIXTURE]["probe"]
    return (
        "(a) KL to the original of the per-layer allocation that minimises the predicted damage "
        "$\\sum_\\ell c_\\ell e_\\ell$ under a budget in bits per linear weight ($e_\\ell$: the option's local "
        "relative output error on layer $\\ell$ with original inputs; $c_\\ell$: KL per unit error of a "
        f"single-layer RTN 3-bit probe on {probe['max_windows']}$\\times${probe['window']} calibration tokens, or "
        "the layer's output energy share), and every "
        "menu option applied uniformly; the same allocation from the menu without block removal (crosses); "
        "bars: 95 \\% block-bootstrap intervals. (b) How each budget's weights are spent (a removed block's "
        "linears cost 0 bits; its damage is the "
        "measured KL of the model without it on the probe tokens). "
        f"{escape_tex(_verdict(tables))} {escape_tex(_removal_text(tables))} {_prediction_text(tables)} "
        f"Menu: {menu}. {escape_tex(facts['model_id'])}; {describe_protocol(facts['protocol'][MIXTURE])}."
    )


@figure("optimal_mixture", needs=(MIXTURE,), caption=_mixture_caption, section=SECTION)
def optimal_mixture(tables: Tables) -> Figure:
    """(a) KL vs bits per weight: optimal allocations (KL and energy sensitivities) and the uniform menu options;
    (b) stacked bars of how each KL-sensitivity budget's weights are spent."""
    frame = comparison(tables)
    mixture = tables[MIXTURE]
    energy = mixture[mixture["sensitivity"] == "energy"].sort_values("budget")
    uniform = mixture[mixture["sensitivity"] == "uniform"]
    fig, (curve, bars) = new_figure(ncols=2, height_ratio=0.45)
    curve.plot(frame[SIZE], frame["kl_to_reference_nats"], color=OKABE_ITO["blue"], marker="o",
               markersize=3, label="optimal allocation (KL sensitivity)")  # fmt: skip
    curve.plot(energy[SIZE], energy["kl_to_reference_nats"], color=OKABE_ITO["sky_blue"], marker="s",
               linestyle="none", label="optimal allocation (energy sensitivity)")  # fmt: skip
    without = mixture[mixture["sensitivity"] == "kl_without_removal"].sort_values("budget")
    curve.plot(without[SIZE], without["kl_to_reference_nats"], color=OKABE_ITO["bluish_green"],
               marker="x", linestyle="none", label="optimal allocation, no block removal")  # fmt: skip
    for kind, color, marker in (("quantization", "orange", "v"), ("pruning", "vermillion", "^"),
                                ("joint", "reddish_purple", "D")):  # fmt: skip
        rows = uniform[uniform["spec"].map(option_kind) == kind].sort_values(SIZE)
        curve.plot(rows[SIZE], rows["kl_to_reference_nats"], color=OKABE_ITO[color], marker=marker,
                   linestyle=":" if kind == "quantization" else "none", label=f"uniform {kind}")  # fmt: skip
    for rows, color in ((frame, "blue"), (uniform, "orange")):  # 95 % block-bootstrap intervals
        if "kl_to_reference_nats_ci_low" in rows and rows["kl_to_reference_nats_ci_low"].notna().any():
            interval_bars(curve, rows[SIZE], rows["kl_to_reference_nats"],
                          rows["kl_to_reference_nats_ci_low"], rows["kl_to_reference_nats_ci_high"],
                          OKABE_ITO[color])  # fmt: skip
    curve.set_yscale("log")
    curve.set_xlabel("bits per weight")
    curve.set_ylabel("KL (nats/token)")
    curve.set_title("(a)", loc="left", fontsize="small")
    fig.legend(*curve.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=6, frameon=False)
    shares = pd.DataFrame([split_categories(json.loads(s)) for s in frame["split"]]).fillna(0.0)
    bottom = np.zeros(len(frame))
    palette = [color for name, color in OKABE_ITO.items() if name != "black"]
    positions = np.arange(len(frame))
    for index, column in enumerate(sorted(shares.columns)):  # past the palette's end, colours repeat hatched
        bars.bar(positions, shares[column], bottom=bottom, color=palette[index % len(palette)], label=column,
                 hatch=HATCHES[index // len(palette) % len(HATCHES)], edgecolor="white", linewidth=0.3)
        bottom += shares[column].to_numpy()
    bars.set_xticks(positions, [f"{b:.3g}" for b in frame["budget"]], rotation=90, fontsize=6)
    bars.set_xlabel("budget (bits per weight)")
    bars.set_ylabel("fraction of linear weights")
    bars.set_title("(b)", loc="left", fontsize="small")
    bars.legend(fontsize=6, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def _table_caption(tables: Tables, facts: Mapping[str, Any]) -> str:
    return (
        "Optimal per-layer allocations (KL sensitivity) by budget: bits per linear weight spent, the largest "
        "shares of the weights by option, predicted KL (nats/token), measured perplexity and KL to the original, "
        "and the best uniform menu option whose size does not exceed the budget, with its size, perplexity and KL "
        "(equal size: the budget is that option's size); removed: the decoder blocks the allocation removes. "
        f"{escape_tex(_verdict(tables))} {escape_tex(_removal_text(tables))} {_prediction_text(tables)} "
        f"{escape_tex(facts['model_id'])}; {describe_protocol(facts['protocol'][MIXTURE])}."
    )


@table(MIXTURE, needs=(MIXTURE,), caption=_table_caption, section=SECTION)
def mixture_frontier_table(tables: Tables) -> Styler:
    """One row per budget: allocation summary, predicted damage, PPL, KL, and the best uniform option's."""
    frame = comparison(tables)
    frame["summary"] = ["; ".join(f"{spec_label(option)}: {100 * share:.0f}%" for option, share in
                                  sorted(json.loads(s).items(), key=lambda item: -item[1])[:3])
                        for s in frame["split"]]  # fmt: skip
    frame["equal"] = frame["equal_size"].map({True: "yes", False: "no"})
    frame["uniform_spec"] = frame["uniform_spec"].map(lambda spec: spec_label(spec) if spec else "")
    columns = {"budget": "Budget", "kl_to_reference_nats": "KL", "uniform_spec": "Best uniform",
               "uniform_kl_nats": "Its KL", "equal": "Equal size", "perplexity": "PPL",
               "uniform_perplexity": "Its PPL", "bits_per_linear_weight": "Spent",
               "uniform_bits_per_linear_weight": "Its bits",
               "predicted_damage": "Predicted KL", "summary": "Allocation (largest shares)",
               "removed_blocks": "Removed"}  # fmt: skip
    return thesis_table(frame, columns, precision=3)
