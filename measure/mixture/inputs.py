"""What an allocation is computed from, measured once per model: the menu's ledger (e_ℓ of every option on every
layer, original inputs), each option's bits per weight on each layer, the sensitivities c_ℓ and, when the menu
offers ``remove``, each block's removal damage."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from measure.capture.statistics import Capture
from measure.evaluation.residual import ResidualStreamEvaluator
from measure.ledger import build_ledger
from measure.mixture.menu import REMOVE, MenuOption
from measure.mixture.sensitivity import SENSITIVITIES, energy_sensitivity, kl_sensitivity, removal_damage
from measure.mixture.solve import option_bits
from measure.models.architecture import LinearRef, describe
from theory.errors import PvqError


@dataclass
class MenuMeasurement:
    """The ledger rows of the menu's options, layers × options bits per weight (:func:`option_bits`), the
    sensitivities by kind (c_ℓ, Series by layer), the single-layer probes (:func:`kl_sensitivity`'s table), the
    blocks' removal damage by kind (empty unless the menu offers ``remove``) and, when kept, the compressed weights
    (layer -> option term -> Ŵ)."""

    ledger: pd.DataFrame
    bits: pd.DataFrame
    sensitivities: dict[str, pd.Series]
    probes: pd.DataFrame | None
    removal: dict[str, pd.Series]
    weights: dict[str, dict[str, torch.Tensor]] | None = None


def check_sensitivity(kind: str) -> str:
    """``kind`` if it is a known sensitivity, else a PvqError listing them."""
    if kind not in SENSITIVITIES:
        raise PvqError(f"unknown sensitivity {kind!r}; choose one of {', '.join(SENSITIVITIES)}")
    return kind


def measure_menu(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    captured: Capture,
    options: Sequence[MenuOption],
    evaluator: ResidualStreamEvaluator | None,
    workers: int | None = 1,
    log: Callable[[str], None] | None = None,
    keep_weights: bool = False,
) -> MenuMeasurement:
    """Ledger of the menu on the original model's ``captured`` Grams, bits, the ``energy`` sensitivity and, when an
    ``evaluator`` is given, the ``kl`` sensitivity (one probed layer at a time, one removed block at a time when
    the menu offers ``remove``). ``keep_weights`` keeps the ledger's compressed weights (one copy of the model's
    linear weights per option) so an allocation is installed without compressing again."""
    steps = [option.step for option in options if option.step is not None]
    if not steps:
        raise PvqError("the menu has no option that compresses; add quantization or pruning options to 'keep'")
    built = build_ledger(model, batches, steps, captured=captured, workers=workers, keep_weights=keep_weights)
    ledger = built.table
    if log is not None:
        log(f"ledger: {ledger['layer'].nunique()} layers x {len(steps)} options")
    layers = list(dict.fromkeys(ledger["layer"]))
    sensitivities = {"energy": energy_sensitivity(ledger)}
    probes = None
    if evaluator is not None:
        probes = kl_sensitivity(model, evaluator, captured, layers, log=log, workers=workers)
        sensitivities["kl"] = probes.set_index("layer")["sensitivity"]
    removal = {}
    if any(option.removes_block for option in options):
        removal = removal_damage(model, evaluator, sensitivities["energy"])
        if log is not None:
            log(f"removal damage: {len(removal['energy'])} blocks")
    return MenuMeasurement(ledger, option_bits(model, layers, options), sensitivities, probes, removal,
                           built.weights)  # fmt: skip


def allocation_weights(
    model: nn.Module, measured: MenuMeasurement, options: Sequence[MenuOption], table: pd.DataFrame
) -> tuple[list[tuple[LinearRef, torch.Tensor]], list[int]]:
    """What installs an allocation ``table`` (layer, option, block) from the kept weights: (layer, Ŵ) for every
    layer it compresses and the blocks it removes. Equals ``apply_spec(model, allocation_spec(table), ...,
    calibration="parallel")`` on the same Grams (tested), without compressing again."""
    if measured.weights is None:
        raise PvqError("the menu was measured without keep_weights; measure it again to install allocations")
    terms = {option.text: option.step.text for option in options if option.step is not None}
    refs = {ref.name: ref for ref in describe(model).linears}
    pairs = [(refs[row.layer], measured.weights[row.layer][terms[row.option]])
             for row in table.itertuples() if row.option in terms]  # fmt: skip
    removed = sorted({int(row.block) for row in table.itertuples() if row.option == REMOVE})
    return pairs, removed


def uniform_table(bits: pd.DataFrame, option: str) -> pd.DataFrame:
    """An allocation table with ``option`` on every layer of ``bits`` (:func:`option_bits`)."""
    return pd.DataFrame({"layer": bits.index, "option": option, "block": bits["block"].astype(int).to_numpy()})
