"""Structured width pruning against BI block removal and SparseGPT at equal size, end to end.

For every width option (the part after ``shrink:`` of a shrink term: ``mlp=0.25``, ``heads=0.34``) the channels or
KV groups are chosen once on the original model's Grams (:func:`measure.compress.shrink.shrink.plan_shrink`) and
scored twice, with the consumers refit and without (the same removed units, the kept columns unchanged). Each
variant is the same-shape model of :func:`measure.compress.shrink.shrink.zeroed_weights`, functionally the
physically shrunk model (tested), so the shrunk and the original share one evaluator: PPL and KL to the original in
nats per token on the pinned windows (:class:`measure.evaluation.residual.ResidualStreamEvaluator`).

**Equal size.** A shrink removing a fraction f of the decoder parameters keeps b(f) = 16(1 − f) bits per decoder
parameter (no mask: the model is smaller), counted like block removal. Beside it: BI block removal (ShortGPT) of
the number of blocks whose size is nearest, its size gap in bits per decoder parameter reported; and SparseGPT at
the sparsity of exactly that size with a free mask (Kuzmin et al. 2023: 16(1 − s) bits per linear weight, norms
and biases at 16 bits, :meth:`measure.removal.equal_size.DecoderSizes.sparsity`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from measure.capture.statistics import Capture
from measure.compress.apply import apply_spec
from measure.compress.importance import Importance, choose_units, measure_importance
from measure.compress.remove import Removal, removed_fraction
from measure.compress.shrink.shrink import ShrinkPlan, ShrinkSettings, plan_shrink, zeroed_weights
from measure.compress.shrink.term import parse_shrink_term
from measure.evaluation.perplexity import INTERVAL_COLUMNS, PerplexityResult, TokenWindows, interval_columns
from measure.evaluation.residual import ResidualStreamEvaluator, restored
from measure.models.architecture import Architecture, describe
from measure.removal.study import decoder_sizes
from measure.removal.terms import width_series
from theory.accounting import removal_bits_per_weight
from theory.errors import PvqError

COLUMNS = ["method", "spec", "matched_to", "refit", "removed_fraction", "bits_per_decoder_parameter",
           "size_gap_bits", "sparsity", "perplexity", "kl_to_reference_nats", "base_perplexity",
           *INTERVAL_COLUMNS]  # fmt: skip
"""``method``: shrink_mlp / shrink_heads (:func:`measure.removal.terms.width_series`), remove:bi or sparsegpt;
``matched_to``: the width option whose size the row matches (its own for a shrink); ``bits_per_decoder_parameter``:
bits per parameter of the original decoder blocks (removed ones at 0 bits, the others at 16);
``size_gap_bits``: the row's size minus the matched shrink's; ``kl_to_reference_nats``: KL to the original,
nats per token, with its 95 % block-bootstrap interval and the other columns of
:data:`measure.evaluation.perplexity.INTERVAL_COLUMNS`."""


def _plan(model: nn.Module, option: str, grams: Mapping[str, np.ndarray]) -> ShrinkPlan:
    settings = ShrinkSettings(**parse_shrink_term(tuple(option.split(":"))))
    if not settings.refit:
        raise PvqError(f"width option {option!r}: the comparison scores every option with and without refit; "
                       "leave out norefit")  # fmt: skip
    return plan_shrink(model, (), settings, grams)


def _without_refit(plan: ShrinkPlan) -> ShrinkPlan:
    """The same removed units with the consumers' kept columns unchanged."""
    return dataclasses.replace(plan, settings=dataclasses.replace(plan.settings, refit=False), consumer_weights={})


def _evaluate_zeroed(arch: Architecture, plan: ShrinkPlan, evaluator: ResidualStreamEvaluator) -> PerplexityResult:
    weights = zeroed_weights(plan)
    with restored(arch.model):
        for ref in arch.linears:
            if ref.name in weights:
                ref.set_weight(weights[ref.name])
        return evaluator.evaluate(start=0)


def nearest_removal(arch: Architecture, importance: Importance, fraction: float) -> tuple[list[int], float]:
    """The n lowest-BI blocks (n in 1..L − 1) whose removed fraction of the decoder is nearest ``fraction``, and
    that fraction."""
    choices = [choose_units("bi", importance, n)[1] for n in range(1, len(arch.blocks))]
    fractions = [removed_fraction(arch, Removal(blocks=blocks)) for blocks in choices]
    best = int(np.argmin([abs(f - fraction) for f in fractions]))
    return choices[best], fractions[best]


def width_comparison_table(
    model: nn.Module, batches: Sequence[torch.Tensor], windows: TokenWindows, options: Sequence[str],
    captured: Capture, batch_size: int = 4, log: Callable[[str], None] = lambda message: None,
) -> pd.DataFrame:  # fmt: skip
    """One row per width option with and without refit, and per option the BI removal of nearest size and
    SparseGPT at its size (:data:`COLUMNS`; module docstring). ``captured``: Grams of the original model on
    ``batches`` (every selection and SparseGPT read them). The model is left as it was."""
    arch = describe(model)
    sizes = decoder_sizes(arch)
    evaluator = ResidualStreamEvaluator(model, windows, batch_size, arch)
    base = evaluator.evaluate().perplexity
    grams = {ref.name: captured.gram_for(ref.name).to_numpy() for ref in arch.linears}
    importance = measure_importance(model, batches, arch)
    rows = []

    def add(method: str, spec: str, option: str, result: PerplexityResult, fraction: float, gap: float,
            refit: bool | None = None, sparsity: float = math.nan) -> None:  # fmt: skip
        rows.append({"method": method, "spec": spec, "matched_to": option, "refit": refit,
                     "removed_fraction": fraction, "bits_per_decoder_parameter": removal_bits_per_weight(fraction),
                     "size_gap_bits": gap, "sparsity": sparsity, "perplexity": result.perplexity,
                     "kl_to_reference_nats": max(result.kl_to_reference_nats, 0.0), "base_perplexity": base,
                     **interval_columns(result)})
        log(f"{spec}: perplexity {result.perplexity:.3f}")

    for option in options:
        plan = _plan(model, option, grams)
        fraction = plan.removed_fraction
        for variant in (plan, _without_refit(plan)):
            refit = variant.settings.refit
            add(width_series(option + ("" if refit else ":norefit")), f"shrink:{option}" + ("" if refit else
                ":norefit"), option, _evaluate_zeroed(arch, variant, evaluator), fraction, 0.0, refit)  # fmt: skip
        blocks, removal = nearest_removal(arch, importance, fraction)
        gap = removal_bits_per_weight(removal) - removal_bits_per_weight(fraction)
        spec = f"remove:blocks={','.join(map(str, blocks))}"
        add("remove:bi", spec, option, evaluator.evaluate(blocks), removal, gap)
        sparsity = sizes.sparsity(fraction, "free")
        with restored(model):
            apply_spec(model, f"sparsegpt:{sparsity:.9f}", batches, calibration="parallel", captured=captured)
            result = evaluator.evaluate(start=0)
        add("sparsegpt", f"sparsegpt:{sparsity:.6f}", option, result, fraction, 0.0, sparsity=sparsity)
    return pd.DataFrame(rows, columns=COLUMNS)
