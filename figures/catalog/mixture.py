"""The optimal mixture: per-layer allocation of pruning and quantization under a size budget, measured end to end.

``mixture_frontier`` measures the menu once on the default protocol (:mod:`measure.allocation`: the ledger's local
error of every option on every layer with the original inputs, each option's bits per weight, the sensitivities),
solves the exact allocation at every budget B (bits per weight over the decoder's linear weights) for the KL
sensitivity (and at a few budgets for the output-energy sensitivity), applies it (``apply_spec`` with per-layer
terms, calibrated on the original model's stream like every frontier spec) and scores it on the pinned evaluation
windows with the original as KL reference (:class:`measure.evaluation.residual.ResidualStreamEvaluator`).

The best uniform spec at a budget is the lowest-KL spec of the same windows and calibration whose size does not
exceed the budget: the frontier's specs (``compression_frontier``) and the removal study's end-to-end RTN and GPTQ
points (groups of 128). The allocation is optimal for the *predicted* damage Σ_ℓ c_ℓ·e_ℓ only; the prediction is
checked against the measured KL (Spearman ρ, Pearson r of the logs).
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

from figures.catalog.frontier import FRONTIER
from figures.catalog.models import CALIBRATION, EVALUATION, calibration, describe_protocol, evaluation_windows
from figures.catalog.removal import STUDY, study_part
from figures.experiments import ExperimentContext, experiment
from figures.registry import Tables, escape_tex, figure, table
from figures.style import OKABE_ITO, new_figure, thesis_table
from measure.allocation.menu import DEFAULT_MENU

SECTION = "The optimal mixture"
MIXTURE = "mixture_frontier"
BUDGETS = (2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0)
ENERGY_BUDGETS = (3.0, 4.0, 6.0)
PROBE_WINDOWS = {"window": 128, "max_windows": 1}
"""The KL sensitivity's single-layer probes are scored on the first 128 tokens of the evaluation text (one probe
per linear layer; a calibration of c_ℓ, not a reported result)."""
TOLERANCE = 1e-9


def synthetic_mixture(rng: np.random.Generator) -> pd.DataFrame:
    """A small stand-in for :func:`mixture_frontier` (same columns, made-up values)."""
    rows = []
    for kind, budgets in (("kl", BUDGETS), ("energy", ENERGY_BUDGETS)):
        for budget in budgets:
            low = max(b for b in (2, 3, 4, 8) if b + 0.125 <= budget) if budget >= 2.125 else 2
            share = float(rng.uniform(0.3, 0.9))
            rest = (1 - share) / 2
            split = {f"gptq:{low}:g128": share, "sparsegpt:0.5+gptq:4:g128": rest, "keep": rest}
            kl = float(np.exp(-budget) * rng.uniform(0.8, 1.2))
            rows.append({"sensitivity": kind, "budget": budget, "bits_per_weight": budget - 0.01,
                         "predicted_damage": kl * (1.1 if kind == "kl" else 0.01), "predicted_kl_nats": kl * 1.1,
                         "lagrangian_lower_bound": kl, "split": json.dumps(split), "perplexity": 20 + 40 * kl,
                         "kl_to_reference_nats": kl, "base_perplexity": 20.0, "menu": DEFAULT_MENU})  # fmt: skip
    return pd.DataFrame(rows)


@experiment(MIXTURE, needs_model=True, synthetic=synthetic_mixture, code=("measure", "theory"),
            config={"menu": DEFAULT_MENU, "budgets": list(BUDGETS), "energy_budgets": list(ENERGY_BUDGETS),
                    "probe": PROBE_WINDOWS, "calibration": CALIBRATION, "evaluation": EVALUATION})  # fmt: skip
def mixture_frontier(config: Mapping[str, Any], context: ExperimentContext) -> pd.DataFrame:
    """One row per (sensitivity, budget): bits spent, predicted damage (own units; and under the KL sensitivity),
    Lagrangian lower bound, the split of the weights over the options (JSON), PPL and KL to the original."""
    from measure.allocation.file import allocation_spec
    from measure.allocation.inputs import measure_menu
    from measure.allocation.menu import parse_menu
    from measure.allocation.solve import allocate, budget_split
    from measure.capture import capture
    from measure.evaluation.residual import ResidualStreamEvaluator, restored
    from measure.spec import apply_spec

    loaded = context.model
    batches = calibration(loaded, config["calibration"])
    batch_size = config["calibration"]["batch_size"]
    evaluator = ResidualStreamEvaluator(loaded.model, evaluation_windows(loaded, config["evaluation"]), batch_size)
    probes = ResidualStreamEvaluator(loaded.model, evaluation_windows(loaded, config["probe"]), batch_size)
    base = evaluator.evaluate().perplexity
    captured = capture(loaded.model, batches)
    options = parse_menu(config["menu"])
    measured = measure_menu(loaded.model, batches, captured, options, probes, log=context.step)
    kl_per_error = measured.sensitivities["kl"]
    mode = config["calibration"]["mode"]
    rows = []
    for kind, budgets in (("kl", config["budgets"]), ("energy", config["energy_budgets"])):
        for budget in budgets:
            allocation = allocate(measured.ledger, measured.bits, options, measured.sensitivities[kind], budget)
            chosen, summary = allocation.table, allocation.summary
            with restored(loaded.model):
                apply_spec(loaded.model, allocation_spec(chosen), batches, calibration=mode, captured=captured)
                result = evaluator.evaluate(start=0)
            predicted_kl = (chosen["relative_error"] * kl_per_error[chosen["layer"]].to_numpy()).sum()
            rows.append({
                "sensitivity": kind, "budget": float(budget), "bits_per_weight": summary["bits_per_weight"],
                "predicted_damage": summary["predicted_damage"], "predicted_kl_nats": float(predicted_kl),
                "lagrangian_lower_bound": summary["lagrangian_lower_bound"],
                "split": json.dumps(budget_split(chosen)), "perplexity": result.perplexity,
                "kl_to_reference_nats": result.kl_to_reference_nats, "base_perplexity": base,
                "menu": config["menu"],
            })  # fmt: skip
            context.step(f"budget {budget:g} ({kind}): KL {result.kl_to_reference_nats:.4g}")
    return pd.DataFrame(rows)


def uniform_specs(tables: Tables) -> pd.DataFrame:
    """Every uniform spec measured on the same calibration and windows: spec, family, bits_per_weight (per
    linear weight), perplexity, kl_to_reference_nats (the frontier's specs and the study's RTN/GPTQ points)."""
    own = tables[FRONTIER][["spec", "family", "bits_per_weight", "perplexity", "kl_to_reference_nats"]]
    study = study_part(tables[STUDY], "end_to_end")
    study = study[study["family"] == "quantization"].assign(bits_per_weight=lambda f: f["linear_bits_per_weight"])
    study = study[["spec", "family", "bits_per_weight", "perplexity", "kl_to_reference_nats"]]
    return pd.concat([own, study], ignore_index=True).drop_duplicates("spec")


def best_uniform(uniform: pd.DataFrame, budget: float, family: str | None = None) -> pd.Series | None:
    """The lowest-KL uniform spec (of ``family`` when given) whose size is at most ``budget``, or None."""
    fits = uniform[uniform["bits_per_weight"] <= budget + TOLERANCE]
    if family is not None:
        fits = fits[fits["family"] == family]
    return None if fits.empty else fits.loc[fits["kl_to_reference_nats"].idxmin()]


def comparison(tables: Tables) -> pd.DataFrame:
    """The KL-sensitivity allocations with the best uniform spec and best uniform quantization at each budget."""
    rows = tables[MIXTURE][tables[MIXTURE]["sensitivity"] == "kl"].sort_values("budget").reset_index(drop=True)
    uniform = uniform_specs(tables)
    extra = []
    for budget in rows["budget"]:
        entry: dict[str, Any] = {}
        for prefix, family in (("uniform", None), ("quantization", "quantization")):
            best = best_uniform(uniform, budget, family)
            values = ("", math.nan, math.nan, math.nan) if best is None else (
                str(best["spec"]), float(best["bits_per_weight"]), float(best["perplexity"]),
                float(best["kl_to_reference_nats"]))  # fmt: skip
            names = ("spec", "bits_per_weight", "perplexity", "kl_nats")
            entry |= {f"{prefix}_{name}": value for name, value in zip(names, values, strict=True)}
        extra.append(entry)
    return pd.concat([rows, pd.DataFrame(extra)], axis=1)


def prediction_check(frame: pd.DataFrame) -> tuple[float, float, int]:
    """Spearman ρ and Pearson r of log predicted KL vs log measured KL over every evaluated allocation, and n."""
    usable = frame[(frame["predicted_kl_nats"] > 0) & (frame["kl_to_reference_nats"] > 0)]
    if len(usable) < 3:
        return math.nan, math.nan, len(usable)
    predicted, measured = np.log(usable["predicted_kl_nats"]), np.log(usable["kl_to_reference_nats"])
    rho = float(stats.spearmanr(predicted, measured).statistic)
    return rho, float(stats.pearsonr(predicted, measured).statistic), len(usable)


def split_categories(split: Mapping[str, float]) -> dict[str, float]:
    """Fractions of the weights by how they are spent: kept (16-bit), quantized per bit width, pruned, pruned and
    quantized per bit width, removed."""
    from measure.allocation.menu import KEEP, parse_menu

    categories: dict[str, float] = {}
    for option, share in split.items():
        if option == KEEP:
            name = "kept (16-bit)"
        else:
            step = parse_menu(option)[0].step
            kind = step.method.kind
            bits = step.params.get("bits") or step.params.get("quantize", {}).get("bits")
            name = {"quantization": f"quantized {bits}-bit", "pruning": "pruned",
                    "joint": f"pruned + quantized {bits}-bit"}.get(kind, kind)  # fmt: skip
        categories[name] = categories.get(name, 0.0) + share
    return categories


def _verdict(frame: pd.DataFrame) -> str:
    wins = frame[frame["kl_to_reference_nats"] < frame["quantization_kl_nats"]]["budget"]
    compared = frame[frame["quantization_kl_nats"].notna()]["budget"]
    if compared.empty:
        return "No uniform quantization fits any budget, so no verdict is drawn."
    listed = ", ".join(f"{b:g}" for b in wins) or "none"
    return (
        "The optimal mixture has lower KL than the best uniform quantization that fits the budget at "
        f"{len(wins)} of {len(compared)} budgets ({listed} bits per weight)."
    )


def _mixture_caption(tables: Tables, facts: Mapping[str, Any]) -> str:
    frame = comparison(tables)
    rho, r, n = prediction_check(tables[MIXTURE])
    menu = escape_tex(tables[MIXTURE]["menu"].iloc[0].replace(",", ", "))
    return (
        "KL to the original of the per-layer allocation that minimises the predicted damage "
        "$\\sum_\\ell c_\\ell e_\\ell$ at each budget (bits per linear weight; $e_\\ell$ the local relative "
        "output error of the option on layer $\\ell$ with original inputs, $c_\\ell$ = KL per unit error of a "
        "single-layer RTN 3-bit probe), against the best uniform spec whose size does not exceed the budget (the "
        "frontier's specs and the removal study's RTN/GPTQ points, same windows and calibration). "
        f"{_verdict(frame)} The allocation is optimal for the predicted damage only; over all {n} evaluated "
        f"allocations, predicted vs measured KL: Spearman $\\rho$ = {rho:.2f}, Pearson $r$ of the logs = {r:.2f}. "
        f"Menu: {menu}. {escape_tex(facts['model_id'])}; {describe_protocol(facts['protocol'][MIXTURE])}."
    )


@figure("optimal_mixture", needs=(MIXTURE, FRONTIER, STUDY), caption=_mixture_caption, section=SECTION)
def optimal_mixture(tables: Tables) -> Figure:
    """(a) KL vs budget: optimal allocation (KL and energy sensitivities), best uniform spec and best uniform
    quantization that fit; (b) stacked bars of how each budget's weights are spent."""
    frame = comparison(tables)
    energy = tables[MIXTURE][tables[MIXTURE]["sensitivity"] == "energy"].sort_values("budget")
    fig, (curve, bars) = new_figure(ncols=2, height_ratio=0.45)
    curve.plot(frame["budget"], frame["kl_to_reference_nats"], color=OKABE_ITO["blue"], marker="o",
               label="optimal allocation (KL sensitivity)")  # fmt: skip
    if not energy.empty:
        curve.plot(energy["budget"], energy["kl_to_reference_nats"], color=OKABE_ITO["sky_blue"], marker="s",
                   linestyle="--", label="optimal allocation (energy sensitivity)")  # fmt: skip
    curve.plot(frame["budget"], frame["uniform_kl_nats"], color=OKABE_ITO["vermillion"], marker="^",
               linestyle="none", label="best uniform spec that fits")  # fmt: skip
    curve.plot(frame["budget"], frame["quantization_kl_nats"], color=OKABE_ITO["orange"], marker="v",
               linestyle=":", label="best uniform quantization that fits")  # fmt: skip
    curve.set_yscale("log")
    curve.set_xlabel("budget (bits per weight)")
    curve.set_ylabel("KL (nats/token)")
    curve.set_title("(a)", loc="left", fontsize="small")
    curve.legend(fontsize=6, frameon=False)
    shares = pd.DataFrame([split_categories(json.loads(s)) for s in frame["split"]]).fillna(0.0)
    bottom = np.zeros(len(frame))
    palette = [color for name, color in OKABE_ITO.items() if name != "black"]
    positions = np.arange(len(frame))
    for index, column in enumerate(sorted(shares.columns)):
        bars.bar(positions, shares[column], bottom=bottom, color=palette[index % len(palette)], label=column)
        bottom += shares[column].to_numpy()
    bars.set_xticks(positions, [f"{b:g}" for b in frame["budget"]])
    bars.set_xlabel("budget (bits per weight)")
    bars.set_ylabel("fraction of linear weights")
    bars.set_title("(b)", loc="left", fontsize="small")
    bars.legend(fontsize=6, frameon=False, loc="upper left")
    return fig


def _table_caption(tables: Tables, facts: Mapping[str, Any]) -> str:
    rho, r, n = prediction_check(tables[MIXTURE])
    return (
        "Optimal per-layer allocations (KL sensitivity) by budget: bits per linear weight spent, the largest "
        "shares of the weights by option, predicted damage (predicted KL, nats/token), measured perplexity and KL "
        "to the original, and the best uniform spec that fits the budget with its size, perplexity and KL. "
        f"{_verdict(comparison(tables))} Predicted vs measured KL over {n} allocations: Spearman $\\rho$ = "
        f"{rho:.2f}, Pearson $r$ of the logs = {r:.2f}; the allocation is optimal for the predicted damage only. "
        f"{escape_tex(facts['model_id'])}; {describe_protocol(facts['protocol'][MIXTURE])}."
    )


@table(MIXTURE, needs=(MIXTURE, FRONTIER, STUDY), caption=_table_caption, section=SECTION)
def mixture_frontier_table(tables: Tables) -> Styler:
    """One row per budget: allocation summary, predicted damage, PPL, KL, and the best uniform spec's."""
    frame = comparison(tables)
    frame["summary"] = [", ".join(f"{option} {100 * share:.0f}%" for option, share in
                                  sorted(json.loads(s).items(), key=lambda item: -item[1])[:3])
                        for s in frame["split"]]  # fmt: skip
    columns = {"budget": "Budget", "bits_per_weight": "Spent", "summary": "Allocation (largest shares)",
               "predicted_damage": "Predicted KL", "perplexity": "PPL", "kl_to_reference_nats": "KL",
               "uniform_spec": "Best uniform", "uniform_bits_per_weight": "Its bits",
               "uniform_perplexity": "Its PPL", "uniform_kl_nats": "Its KL"}  # fmt: skip
    return thesis_table(frame[list(columns)], columns, precision=3)
