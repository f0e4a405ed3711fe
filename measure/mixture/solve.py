"""The optimal allocation: local errors e_ℓ(option) from the ledger, sensitivities c_ℓ, integer costs, and the
exact multiple-choice knapsack of :mod:`theory.knapsack`.

minimise Σ_ℓ c_ℓ·e_ℓ(o_ℓ)  subject to  Σ_ℓ params_ℓ·bits_ℓ(o_ℓ) ≤ B·Σ_ℓ params_ℓ.

e_ℓ is the ledger's relative output error tr(ΔW H ΔWᵀ)/tr(W H Wᵀ) of the option applied to layer ℓ alone on its
original inputs (:mod:`measure.ledger`); ``keep`` has e = 0 at 16 bits. Costs are made exact integers: every
option's bits per weight is a rational p/q (e.g. 4 + 16/128), so params·bits·D is an integer for D the least
common multiple of the denominators, and the budget is ⌊B·Σ params·D⌋. The allocation is optimal for the
*predicted* damage only; whether predicted damage ranks allocations as the measured KL does is checked end to end.

With ``remove`` in the menu every decoder block is a removable group of the knapsack
(:class:`theory.knapsack.RemovableGroup`): its linears then cost 0 bits and the damage is the block's removal
damage (:func:`measure.mixture.sensitivity.removal_damage`); the allocation table marks each of its layers
``remove`` with relative error 1 (Ŵ = 0) and a share of the block's damage proportional to the layer's parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import pandas as pd
from torch import nn

from measure.mixture.menu import REMOVE, MenuOption
from measure.models.architecture import describe
from theory.accounting import BASE_BITS
from theory.errors import PvqError
from theory.knapsack import RemovableGroup, solve_knapsack

ALLOCATION_COLUMNS = [
    "layer", "block", "sublayer", "option", "bits_per_linear_weight", "parameters", "relative_error",
    "sensitivity", "predicted_damage",
]  # fmt: skip
"""One row per linear layer: the chosen option, its bits per weight of the layer
(``bits_per_linear_weight``), the layer's parameters (out·in),
the option's ledger error e_ℓ, the sensitivity c_ℓ and the predicted damage c_ℓ·e_ℓ."""
MAX_DENOMINATOR = 1 << 20


@dataclass
class Allocation:
    """An allocation table (:data:`ALLOCATION_COLUMNS`) and its summary: budget and bits spent per linear weight
    (``budget_bits_per_linear_weight``, ``bits_per_linear_weight``),
    predicted damage, Lagrangian lower bound and equal slope, sensitivity kind, menu."""

    table: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)


def option_errors(ledger: pd.DataFrame, options: Sequence[MenuOption]) -> pd.DataFrame:
    """Layers × options: e_ℓ(option) from the ledger's rows (``keep``: 0); PvqError when an option is missing."""
    errors = ledger.pivot_table(index="layer", columns="term", values="relative_error", sort=False)
    missing = [option.text for option in options if option.step is not None and option.step.text not in errors]
    if missing:
        raise PvqError(f"the ledger has no rows for menu option(s) {', '.join(missing)}; measure them first")
    frame = pd.DataFrame(index=errors.index)
    for option in options:
        frame[option.text] = 0.0 if option.step is None else errors[option.step.text]
    if frame.isna().to_numpy().any():
        raise PvqError("the ledger lacks an option's error on some layer; measure every option on every layer")
    return frame


def option_bits(model: nn.Module, layers: Sequence[str], options: Sequence[MenuOption]) -> pd.DataFrame:
    """Layers × options: bits per weight of each option on each layer's shape, with a ``parameters`` column."""
    refs = {ref.name: ref for ref in describe(model).linears}
    rows = {}
    for name in layers:
        ref = refs[name]
        rows[name] = {**{o.text: o.bits_per_weight(ref) for o in options},
                      "parameters": ref.out_features * ref.in_features, "block": ref.block_index,
                      "sublayer": ref.sublayer_kind}  # fmt: skip
    return pd.DataFrame.from_dict(rows, orient="index")


def _rational(bits: float) -> Fraction:
    exact = Fraction(bits).limit_denominator(MAX_DENOMINATOR)
    if abs(float(exact) - bits) > 1e-12 * max(1.0, bits):
        raise PvqError(f"bits per weight {bits!r} is no rational with a small denominator; costs cannot be exact")
    return exact


def check_budget(budget: float, cheapest: float) -> None:
    """PvqError unless cheapest ≤ budget ≤ 16 bits per weight."""
    if not (isinstance(budget, int | float) and math.isfinite(budget)):
        raise PvqError(f"the budget must be a number of bits per weight, got {budget!r}")
    if budget > BASE_BITS:
        raise PvqError(f"the budget {budget:g} bits per weight is above {BASE_BITS:g}, all layers kept at 16 bits")
    if budget < cheapest - 1e-12:
        raise PvqError(
            f"the budget {budget:g} bits per weight is below the cheapest allocation of this menu "
            f"({cheapest:.6g}: every layer at its cheapest option); raise the budget or add cheaper options"
        )


def cheapest_bits(model: nn.Module, options: Sequence[MenuOption]) -> float:
    """Bits per weight of the cheapest allocation: every layer the menu covers at its cheapest option."""
    refs = [ref for ref in describe(model).linears if all(option.covers(ref) for option in options)]
    if not refs:
        raise PvqError("no linear layer of the model is covered by every menu option")
    if any(option.removes_block for option in options):
        return 0.0
    spent = sum(min(o.bits_per_weight(ref) for o in options) * ref.out_features * ref.in_features for ref in refs)
    return spent / sum(ref.out_features * ref.in_features for ref in refs)


def allocate(
    ledger: pd.DataFrame,
    bits: pd.DataFrame,
    options: Sequence[MenuOption],
    sensitivity: pd.Series,
    budget: float,
    sensitivity_kind: str = "",
    removal: pd.Series | None = None,
) -> Allocation:
    """The exact optimal allocation at ``budget`` bits per weight (module docstring).

    ``bits``: :func:`option_bits` of the ledger's layers; ``sensitivity``: c_ℓ indexed by layer; ``removal``: the
    blocks' removal damage indexed by block, needed when the menu offers ``remove``."""
    layer_options = [option for option in options if not option.removes_block]
    removable = len(layer_options) < len(options)
    if removable and removal is None:
        raise PvqError(f"the menu offers {REMOVE!r} but no block removal damage was measured")
    errors = option_errors(ledger, layer_options)
    blocks = bits.loc[list(errors.index), "block"].astype(int)
    layers = sorted(errors.index, key=lambda layer: int(blocks[layer]))  # stable: layer order within a block
    missing = [layer for layer in layers if layer not in sensitivity.index]
    if missing:
        raise PvqError(f"no sensitivity for layer(s) {', '.join(missing[:3])}")
    texts = [option.text for option in layer_options]
    bits = bits.loc[layers]
    parameters = bits["parameters"].astype(int)
    total = int(parameters.sum())
    cheapest = 0.0 if removable else float((bits[texts].min(axis=1) * parameters).sum()) / total
    check_budget(budget, cheapest)
    rational = {(layer, text): _rational(float(bits.at[layer, text])) for layer in layers for text in texts}
    scale = math.lcm(*(value.denominator for value in rational.values()), _rational(budget).denominator)
    costs = [[int(rational[layer, text] * scale) * int(parameters[layer]) for text in texts] for layer in layers]
    damages = [[float(sensitivity[layer] * errors.at[layer, text]) for text in texts] for layer in layers]
    capacity = math.floor(_rational(budget) * scale * total)
    groups = _block_groups(bits["block"].astype(int).tolist(), removal) if removable else []
    solution = solve_knapsack(costs, damages, capacity, groups)
    removed_blocks = [int(bits["block"].iloc[groups[g].first]) for g in solution.removed]
    block_parameters = parameters.groupby(bits["block"].astype(int).to_numpy()).sum()
    rows = []
    for index, (layer, option) in enumerate(zip(layers, solution.choice, strict=True)):
        block = int(bits.at[layer, "block"])
        if option < 0:
            share = int(parameters[layer]) / int(block_parameters[block])
            rows.append((REMOVE, 0.0, 1.0, float(removal[block]) * share))
        else:
            text = texts[option]
            rows.append((text, float(bits.at[layer, text]), float(errors.at[layer, text]), damages[index][option]))
    table = pd.DataFrame({
        "layer": layers, "block": bits["block"].astype(int).to_numpy(), "sublayer": bits["sublayer"].to_numpy(),
        "option": [row[0] for row in rows], "bits_per_linear_weight": [row[1] for row in rows],
        "parameters": parameters.to_numpy(), "relative_error": [row[2] for row in rows],
        "sensitivity": [float(sensitivity[layer]) for layer in layers],
        "predicted_damage": [row[3] for row in rows],
    })  # fmt: skip
    summary = {
        "budget_bits_per_linear_weight": budget,
        "bits_per_linear_weight": solution.cost / (scale * total),
        "predicted_damage": solution.damage,
        "lagrangian_lower_bound": solution.lower_bound,
        "equal_slope": solution.slope / scale,
        "sensitivity": sensitivity_kind,
        "menu": [option.text for option in options],
        "layers": len(layers),
        "parameters": total,
        "removed_blocks": removed_blocks,
    }
    return Allocation(table[ALLOCATION_COLUMNS], summary)


def _block_groups(blocks: Sequence[int], removal: pd.Series) -> list[RemovableGroup]:
    """One removable group per block (its layers are consecutive in ``blocks``), cost 0, its removal damage."""
    groups = []
    for block in dict.fromkeys(blocks):
        members = [index for index, b in enumerate(blocks) if b == block]
        if block not in removal.index:
            raise PvqError(f"no removal damage for block {block}")
        groups.append(RemovableGroup(members[0], members[-1], 0, float(removal[block])))
    return groups


def uniform_damage(ledger: pd.DataFrame, sensitivity: pd.Series, option: MenuOption) -> float:
    """Predicted damage Σ_ℓ c_ℓ·e_ℓ(option) of ``option`` on every layer of the ledger (``keep``: 0)."""
    errors = option_errors(ledger, [option])[option.text]
    return float(math.fsum(sensitivity[layer] * error for layer, error in errors.items()))


def budget_split(table: pd.DataFrame) -> dict[str, float]:
    """Fractions of the weights (by parameters) per option of an allocation table."""
    shares = table.groupby("option", sort=False)["parameters"].sum() / table["parameters"].sum()
    return {str(option): float(share) for option, share in shares.items()}
