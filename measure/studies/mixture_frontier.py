"""The optimal mixture measured end to end: per-layer allocations of a menu and its uniform specs.

The menu is measured once (:func:`measure.mixture.inputs.measure_menu`: the local error of every option on every
layer with the original inputs, each option's bits per weight, the sensitivities and each block's removal
damage); the exact allocation is solved at every budget B (bits per weight over the decoder's linear weights) for
the KL sensitivity (and at the energy budgets for the output-energy sensitivity and for the menu without block
removal), installed (the ledger's compressed weights, which is what ``apply_spec`` with the allocation's
per-layer terms gives with calibration on the original model's stream; removed blocks are skipped) and scored on
the evaluation windows with the original as KL reference
(:class:`measure.evaluation.residual.ResidualStreamEvaluator`). Every compressing option of the menu is also
applied uniformly, and allocated at exactly its size, so each uniform spec meets an allocation of the same size
from the same options (like with like).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from measure.capture.statistics import capture
from measure.compress.apply import weights_installed
from measure.evaluation.perplexity import PerplexityResult, TokenWindows, interval_columns, paired_kl_difference
from measure.evaluation.residual import ResidualStreamEvaluator
from measure.mixture.inputs import MenuMeasurement, allocation_weights, measure_menu, uniform_table
from measure.mixture.menu import REMOVE, MenuOption, parse_menu
from measure.mixture.solve import allocate, budget_split, uniform_damage

TOLERANCE = 1e-9
"""Two sizes in bits per weight closer than this are the same size."""
KINDS = ("kl", "kl_without_removal", "energy", "uniform")
"""Row kinds: allocation with the KL sensitivity, the same without ``remove`` in the menu, with the energy
sensitivity, and a menu option applied to every layer (``spec`` names it)."""
PAIRED_COLUMNS = ["paired_kl_difference", "paired_kl_difference_ci_low", "paired_kl_difference_ci_high"]
"""On a uniform row: KL of the KL allocation of exactly its size minus the uniform option's KL, nats per token,
with its 95 % paired block-bootstrap interval (same tokens; NaN where no allocation has that size)."""
COLUMNS = ["sensitivity", "spec", "budget", "bits_per_linear_weight", "predicted_damage", "predicted_kl_nats",
           "lagrangian_lower_bound", "split", "removed_blocks", "perplexity", "kl_to_reference_nats",
           "base_perplexity", "menu", "kl_to_reference_nats_ci_low", "kl_to_reference_nats_ci_high",
           "perplexity_ci_low", "perplexity_ci_high", "same_top_rate", "kl_p99", "tokens",
           *PAIRED_COLUMNS]  # fmt: skip
"""The table's columns in order: the row kind (:data:`KINDS`), the uniform spec, the budget, bits spent
(``bits_per_linear_weight``: over the decoder blocks' linear weights, removed blocks' at 0 bits), predicted
damage (own units; and predicted KL), Lagrangian lower bound, the split of the weights over the options (JSON),
the removed blocks, PPL and KL to the original with their intervals, and :data:`PAIRED_COLUMNS`."""


class AllocationScorer:
    """PPL and KL of allocations on one evaluator; an allocation already evaluated (same option on every layer,
    e.g. the menu without ``remove`` when no block goes) is the same model and is not evaluated again."""

    def __init__(self, model: nn.Module, measured: MenuMeasurement, options: Sequence[MenuOption],
                 evaluator: ResidualStreamEvaluator) -> None:  # fmt: skip
        self.model, self.measured, self.options, self.evaluator = model, measured, options, evaluator
        self.seen: dict[tuple[tuple[str, str], ...], PerplexityResult] = {}

    def __call__(self, table: pd.DataFrame) -> PerplexityResult:
        key = tuple(sorted(zip(table["layer"], table["option"], strict=True)))
        if key not in self.seen:
            pairs, removed = allocation_weights(self.model, self.measured, self.options, table)
            with weights_installed(pairs):
                self.seen[key] = self.evaluator.evaluate(removed, start=0)
        return self.seen[key]


def uniform_sizes(measured: MenuMeasurement, options: Sequence[MenuOption]) -> dict[str, float]:
    """Bits per weight over the decoder's linear weights of every compressing option applied to every layer."""
    parameters = measured.bits["parameters"]
    return {o.text: float((measured.bits[o.text] * parameters).sum() / parameters.sum())
            for o in options if o.step is not None}  # fmt: skip


def evaluation_plan(uniform_bits: dict[str, float], budgets: Sequence[float],
                    energy_budgets: Sequence[float]) -> list[tuple[str, Any]]:  # fmt: skip
    """(row kind, budget or uniform spec) of every row: KL allocations at ``budgets`` and at every uniform size,
    energy and no-removal allocations at ``energy_budgets``, then every uniform spec."""
    plan: list[tuple[str, Any]] = [("kl", b) for b in dict.fromkeys([*budgets, *uniform_bits.values()])]
    plan += [(kind, b) for kind in ("energy", "kl_without_removal") for b in energy_budgets]
    return plan + [("uniform", spec) for spec in uniform_bits]


def uniform_row(measured: MenuMeasurement, option: MenuOption, bits: float) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The every-layer table of ``option`` and its row (predicted damage with the KL sensitivity)."""
    damage = uniform_damage(measured.ledger, measured.sensitivities["kl"], option)
    row = {"spec": option.text, "budget": bits, "bits_per_linear_weight": bits, "predicted_damage": damage,
           "lagrangian_lower_bound": math.nan, "split": json.dumps({option.text: 1.0}), "removed_blocks": "",
           "predicted_kl_nats": damage}  # fmt: skip
    return uniform_table(measured.bits, option.text), row


def allocation_row(measured: MenuMeasurement, menu: Sequence[MenuOption], sensitivity: str,
                   budget: float) -> tuple[pd.DataFrame, dict[str, Any]]:  # fmt: skip
    """The exact allocation of ``menu`` at ``budget`` for ``sensitivity`` and its row; the predicted KL adds the
    kept layers' c_ℓ·e_ℓ (KL sensitivity) and the removed blocks' KL damage."""
    allocation = allocate(measured.ledger, measured.bits, menu, measured.sensitivities[sensitivity], budget,
                          sensitivity, measured.removal.get(sensitivity))  # fmt: skip
    chosen, summary = allocation.table, allocation.summary
    kept = chosen[chosen["option"] != REMOVE]
    removal_kl = float(measured.removal["kl"].reindex(summary["removed_blocks"]).sum())
    kl_per_error = measured.sensitivities["kl"]
    predicted_kl = (kept["relative_error"] * kl_per_error[kept["layer"]].to_numpy()).sum() + removal_kl
    row = {"spec": "", "budget": float(budget), "bits_per_linear_weight": summary["bits_per_linear_weight"],
           "predicted_damage": summary["predicted_damage"], "predicted_kl_nats": float(predicted_kl),
           "lagrangian_lower_bound": summary["lagrangian_lower_bound"], "split": json.dumps(budget_split(chosen)),
           "removed_blocks": ",".join(map(str, summary["removed_blocks"]))}  # fmt: skip
    return chosen, row


def allocation_frontier_table(
    model: nn.Module, batches: Sequence[torch.Tensor], windows: TokenWindows, probe_windows: TokenWindows,
    menu: str, budgets: Sequence[float], energy_budgets: Sequence[float], batch_size: int,
    log: Callable[[str], None] = lambda message: None,
) -> pd.DataFrame:  # fmt: skip
    """One row per evaluated model (:data:`COLUMNS`; module docstring): ``menu`` measured on ``batches`` with the
    KL sensitivity's single-layer probes on ``probe_windows``, allocations and uniform specs scored on
    ``windows``."""

    evaluator = ResidualStreamEvaluator(model, windows, batch_size)
    probes = ResidualStreamEvaluator(model, probe_windows, batch_size)
    base = evaluator.evaluate().perplexity
    captured = capture(model, batches)
    options = parse_menu(menu)
    measured = measure_menu(model, batches, captured, options, probes, workers=None, log=log, keep_weights=True)
    uniform_bits = uniform_sizes(measured, options)
    without_removal = [option for option in options if not option.removes_block]
    scored = AllocationScorer(model, measured, options, evaluator)
    rows, results = [], []
    for kind, target in evaluation_plan(uniform_bits, budgets, energy_budgets):
        if kind == "uniform":
            option = next(o for o in options if o.text == target)
            chosen, row = uniform_row(measured, option, uniform_bits[target])
        else:
            allowed = without_removal if kind == "kl_without_removal" else options
            chosen, row = allocation_row(measured, allowed, "energy" if kind == "energy" else "kl", target)
        result = scored(chosen)
        results.append(result)
        rows.append({"sensitivity": kind, **row, "perplexity": result.perplexity,
                     "kl_to_reference_nats": result.kl_to_reference_nats, "base_perplexity": base,
                     "menu": menu, **interval_columns(result)})  # fmt: skip
        log(f"{kind} {target}: KL {result.kl_to_reference_nats:.4g}")
    frame = pd.DataFrame(rows).assign(**paired_columns(rows, results))
    return frame[COLUMNS]


def paired_columns(rows: list[dict[str, Any]], results: list[PerplexityResult]) -> dict[str, list[float]]:
    """:data:`PAIRED_COLUMNS` of every row: on a uniform row, the KL allocation of exactly its size against it."""
    allocations = [(row["budget"], result) for row, result in zip(rows, results, strict=True)
                   if row["sensitivity"] == "kl"]  # fmt: skip
    columns: dict[str, list[float]] = {column: [] for column in PAIRED_COLUMNS}
    for row, result in zip(rows, results, strict=True):
        same = [alloc for budget, alloc in allocations if abs(budget - row["bits_per_linear_weight"]) <= TOLERANCE]
        if row["sensitivity"] != "uniform" or not same:
            values = [math.nan] * 3
        else:
            found = paired_kl_difference(same[0], result)
            values = [found.mean, found.low, found.high]
        for column, value in zip(PAIRED_COLUMNS, values, strict=True):
            columns[column].append(value)
    return columns
