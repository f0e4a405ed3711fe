"""What an allocation is computed from, measured once per model: the menu's ledger (e_ℓ of every option on every
layer, original inputs), each option's bits per weight on each layer, and the sensitivities c_ℓ."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from measure.capture.statistics import Capture
from measure.evaluation.residual import ResidualStreamEvaluator
from measure.ledger import build_ledger
from measure.mixture.menu import MenuOption
from measure.mixture.sensitivity import SENSITIVITIES, energy_sensitivity, kl_sensitivity
from measure.mixture.solve import option_bits
from theory.errors import PvqError


@dataclass
class MenuMeasurement:
    """The ledger rows of the menu's options, layers × options bits per weight (:func:`option_bits`), and the
    sensitivities by kind (``energy``: a Series by layer; ``kl``: :func:`kl_sensitivity`'s table)."""

    ledger: pd.DataFrame
    bits: pd.DataFrame
    sensitivities: dict[str, pd.Series]
    probes: pd.DataFrame | None


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
) -> MenuMeasurement:
    """Ledger of the menu on the original model's ``captured`` Grams, bits, the ``energy`` sensitivity and, when an
    ``evaluator`` is given, the ``kl`` sensitivity (one probed layer at a time)."""
    steps = [option.step for option in options if option.step is not None]
    if not steps:
        raise PvqError("the menu has no option that compresses; add quantization or pruning options to 'keep'")
    ledger = build_ledger(model, batches, steps, captured=captured, workers=workers).table
    if log is not None:
        log(f"ledger: {ledger['layer'].nunique()} layers x {len(steps)} options")
    layers = list(dict.fromkeys(ledger["layer"]))
    sensitivities = {"energy": energy_sensitivity(ledger)}
    probes = None
    if evaluator is not None:
        probes = kl_sensitivity(model, evaluator, captured, layers, log=log)
        sensitivities["kl"] = probes.set_index("layer")["sensitivity"]
    return MenuMeasurement(ledger, option_bits(model, layers, options), sensitivities, probes)
