"""Per-layer sensitivities c_ℓ: how much end-to-end damage one unit of a layer's local relative error costs.

* ``energy``: c_ℓ = the layer's share of the output energy, tr(W H Wᵀ) / Σ_k tr(W_k H_k W_kᵀ) (the ledger's
  ``output_energy_share``). Σ_ℓ c_ℓ·e_ℓ is then the energy-weighted local error ‖ΔY‖² / ‖Y‖² summed over layers
  (dimensionless), a proxy that ignores how errors propagate to the logits.
* ``kl``: c_ℓ = KL_ℓ / e_ℓ(probe), calibrated end to end: the probe (RTN 3-bit in groups of 128) is applied to
  layer ℓ alone and the KL of the model's next-token distribution to the original's is measured on the evaluation
  windows [nats/token] (:class:`measure.evaluation.residual.ResidualStreamEvaluator`, started at ℓ's block).
  Σ_ℓ c_ℓ·e_ℓ is then a predicted KL [nats/token] under two assumptions, both checked only end to end: KL grows
  linearly in each layer's local error, and the layers' contributions add.

Removing block b (the menu's ``remove``) is no small perturbation, so its damage is measured, not extrapolated:
``kl``: the KL [nats/token] of the model with block b alone removed, on the same probe windows
(:func:`removal_damage`); ``energy``: Σ_ℓ∈b c_ℓ·1 (every linear of b has relative error 1: Ŵ = 0). Both are added
to the layers' damages under the same additivity assumption.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import pandas as pd
from torch import nn

from measure.capture.statistics import Capture
from measure.compress.apply import weights_installed
from measure.compress.layer import compress_layer, method_weight
from measure.compress.methods.metrics import LayerErrorMeter
from measure.compress.parallel import fork_map
from measure.compress.spec import LayerStep, parse_spec
from measure.evaluation.residual import ResidualStreamEvaluator
from measure.models.architecture import LinearRef, describe
from theory.errors import PvqError

SENSITIVITIES = ("kl", "energy")
PROBE = "rtn:3:g128"
"""The single-layer perturbation of the ``kl`` sensitivity."""


def energy_sensitivity(ledger: pd.DataFrame) -> pd.Series:
    """c_ℓ = output energy share, indexed by layer (module docstring)."""
    return ledger.drop_duplicates("layer").set_index("layer")["output_energy_share"].astype(float)


def removal_damage(
    model: nn.Module, evaluator: ResidualStreamEvaluator | None, energy: pd.Series
) -> dict[str, pd.Series]:
    """Damage of removing each decoder block alone, by sensitivity kind, indexed by block (module docstring):
    ``energy``: the sum of the block's layers' energy shares (``energy``: c_ℓ by layer); ``kl`` (with an
    ``evaluator``): the end-to-end KL [nats/token] with the block skipped."""
    arch = describe(model)
    block_of = {ref.name: ref.block_index for ref in arch.linears}
    damage = {"energy": energy.groupby(energy.index.map(block_of)).sum().astype(float)}
    if evaluator is not None:
        damage["kl"] = pd.Series(
            {block.index: evaluator.evaluate([block.index]).kl_to_reference_nats for block in arch.blocks}
        )
    return damage


def kl_sensitivity(
    model: nn.Module,
    evaluator: ResidualStreamEvaluator,
    captured: Capture,
    layers: Sequence[str] | None = None,
    probe: str = PROBE,
    log: Callable[[str], None] | None = None,
    workers: int | None = 1,
) -> pd.DataFrame:
    """Per layer: the probe's local error e_ℓ (on ``grams[layer]``, the layer's input Gram), the end-to-end KL
    [nats/token] with only that layer probed, and c_ℓ = KL / e_ℓ. The model is restored after each layer.

    ``captured``: the original model's Grams H = XᵀX of each layer's inputs. ``workers``: forked single-threaded
    processes sharing the layers (None: one per core; each probes its own copy-on-write copy of the model; the
    numbers agree with one process to floating-point rounding, tested). Columns: layer, block, probe,
    probe_relative_error, probe_kl_nats, sensitivity."""
    step = parse_spec(probe).layer_steps[0]
    refs = [ref for ref in describe(model).linears if layers is None or ref.name in set(layers)]
    done = []

    def progress(_: object) -> None:
        done.append(1)
        if log is not None and len(done) % 20 == 0:
            log(f"sensitivity {len(done)}/{len(refs)} layers")

    probed = fork_map(partial(_probe_layer, step=step, evaluator=evaluator, captured=captured), refs, workers,
                      on_result=progress)  # fmt: skip
    rows = []
    for ref, (relative, kl) in zip(refs, probed, strict=True):
        if not relative > 0:
            raise PvqError(f"the probe {probe!r} leaves layer {ref.name} unchanged; its sensitivity is undefined")
        rows.append({"layer": ref.name, "block": ref.block_index, "probe": probe, "probe_relative_error": relative,
                     "probe_kl_nats": kl, "sensitivity": kl / relative})  # fmt: skip
    frame = pd.DataFrame(rows)
    if not frame["sensitivity"].map(math.isfinite).all():
        raise PvqError("a single-layer KL is not finite; check the evaluation windows")
    return frame


def _probe_layer(ref: LinearRef, step: LayerStep, evaluator: ResidualStreamEvaluator, captured: Capture
                 ) -> tuple[float, float]:  # fmt: skip
    """(e_ℓ, KL) of ``step`` applied to ``ref`` alone; the layer's weight is restored after."""
    weight = method_weight(ref)
    gram = captured.gram_for(ref.name).gram
    compressed = compress_layer(weight, step, gram, LayerErrorMeter(weight, gram))
    with weights_installed([(ref, compressed.weight_hat)]):
        kl = evaluator.evaluate(start=ref.block_index).kl_to_reference_nats
    return compressed.relative_error, kl
