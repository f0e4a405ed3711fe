"""Every compression term of the removal study measured in every view: the points of its curves.

:func:`measure_quantizer` measures one quantizer at its integer widths (and end to end the models spliced from two
consecutive widths at each removal level's size, :func:`mixed_weights`); :func:`measure_pruner` one pruner at its
sparsities, with the bits of every mask convention; :func:`measure_width` one structured width pruning (MLP
channels and / or attention heads removed, consumers refit, :mod:`measure.compress.shrink`) at its size;
:func:`measure_reference` the Gaussian rate–distortion reference of every layer (:mod:`theory.rate_distortion`).
Each adds rows to :class:`StudyPoints` (:data:`POINT_COLUMNS`), the curves :mod:`measure.removal.answer` reads at
the removal sizes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from measure.compress.shrink.shrink import ShrinkSettings, plan_shrink, zeroed_weights
from measure.compress.shrink.term import parse_shrink_term
from measure.compress.spec import LayerStep, parse_term_list
from measure.evaluation.perplexity import PerplexityResult
from measure.evaluation.residual import ResidualStreamEvaluator
from measure.removal.answer import (
    INTERVAL_COLUMNS,
    RD_JOINT_SERIES,
    RD_SERIES,
    WIDTH_FAMILY,
    EndToEndTokens,
    end_to_end_intervals,
)
from measure.removal.equal_size import DecoderSizes, bracketing_widths, mask_convention, row_mix
from measure.removal.views import LOCAL_VARIANT_COLUMNS, TermWeights, ViewMeter, layer_view_errors, splice_rows
from theory.accounting import removal_bits_per_weight, sparse_bits_per_weight
from theory.rate_distortion import decoder_rd_relative_error, layer_spectrum, rd_relative_error
from theory.sqnr import relative_error_db


class StudyPoints:
    """The points of the study's curves: one row per view and measured setting (columns :data:`POINT_COLUMNS`)."""

    def __init__(self, sizes: DecoderSizes, views: Sequence[str]) -> None:
        self.sizes, self.views, self.rows = sizes, tuple(views), []
        self.tokens = EndToEndTokens()

    def add(self, series: str, family: str, term: str, linear_bits: float, errors: Mapping[str, float],
            result: PerplexityResult | None = None, mask_convention: str | None = None,
            **extra: Any) -> None:  # fmt: skip
        """One row per requested view with an error in ``errors`` (and end to end when ``result`` is given)."""
        errors = dict(errors)
        intervals: dict[str, float] = {}
        if result is not None:  # a KL estimate within rounding of 0 can come out negative: KL >= 0
            errors["end_to_end"] = max(result.kl_to_reference_nats, 0.0)
            intervals = end_to_end_intervals(result)
            self.tokens.add(term, result)
        variants = errors.pop("variants", {})
        for view in self.views:
            if view not in errors:
                continue
            found = variants.get(view, {})
            self.rows.append({
                "view": view, "series": series, "family": family, "term": term, "mask_convention": mask_convention,
                "bits_per_decoder_parameter": self.sizes.decoder_bits(linear_bits),
                "bits_per_linear_weight": linear_bits,
                "error": errors[view], "quality_db": relative_error_db(errors[view]),
                "perplexity": result.perplexity if view == "end_to_end" and result is not None else math.nan,
                "mixed": False, "removed_fraction": math.nan, "size_gap_bits": math.nan, **extra,
                **(intervals if view == "end_to_end" else {}),
                **{column: found.get(column.removeprefix("error_"), math.nan) for column in LOCAL_VARIANT_COLUMNS},
            })  # fmt: skip

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=POINT_COLUMNS)


POINT_COLUMNS = ["view", "series", "family", "term", "mask_convention", "bits_per_decoder_parameter",
                 "bits_per_linear_weight", "error", "quality_db", "perplexity", "mixed", "removed_fraction",
                 "size_gap_bits", *INTERVAL_COLUMNS, *LOCAL_VARIANT_COLUMNS]  # fmt: skip
"""``bits_per_decoder_parameter``: the model's size in bits per parameter of the original decoder blocks (removed
parameters at 0 bits, uncompressed ones at 16); ``bits_per_linear_weight``: the same size per linear weight of the
decoder blocks that remain (uncompressed ones at 16 bits); ``error``: the view's error (relative error, or KL in
nats per token end to end; local views: the headline variant, on held-out data without sink positions);
``quality_db`` =
−10·log10 error; ``mixed``: a model spliced from two widths at a removal level's size (``removed_fraction``),
``size_gap_bits`` its size minus b(f); end to end the 95 % block-bootstrap intervals (:data:`INTERVAL_COLUMNS`);
local views the robustness variants (:data:`LOCAL_VARIANT_COLUMNS`)."""


class StepClock:
    """Seconds of each call made through it, printed as ``compress 1.2 s, local_errors 3.4 s, ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, function: Callable[..., Any], *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args)
        finally:
            self.seconds[function.__name__.strip("_")] = time.perf_counter() - start

    def __str__(self) -> str:
        return ", ".join(f"{name} {value:.1f} s" for name, value in self.seconds.items())


def _step(text: str) -> LayerStep:
    return parse_term_list(text)[0]


def _linear_bits(meter: ViewMeter, step: LayerStep) -> float:
    """Parameter-weighted bits per linear weight of ``step`` over the meter's layers."""
    parameters = [int(p) for p in meter.layers["parameters"]]
    bits = sum(step.bits_per_weight(ref) * p for ref, p in zip(meter.refs, parameters, strict=True))
    return bits / sum(parameters)


def _evaluate(meter: ViewMeter, weights: Sequence[torch.Tensor], evaluator: ResidualStreamEvaluator | None
              ) -> PerplexityResult | None:  # fmt: skip
    return None if evaluator is None else meter.evaluate(weights, evaluator)


def mixed_weights(meter: ViewMeter, low: tuple[LayerStep, TermWeights], high: tuple[LayerStep, TermWeights],
                  target_linear_bits: float) -> tuple[TermWeights, float]:  # fmt: skip
    """The term whose linears cost ``target_linear_bits`` per weight: in every layer the same fraction of leading
    rows from ``high``, the rest from ``low`` (:func:`measure.removal.equal_size.row_mix`), its errors exact from
    the two terms' per-row errors (rows add); and the bits per linear weight it reaches."""
    (low_step, low_term), (high_step, high_term) = low, high
    refs = meter.refs
    total = sum(ref.out_features * ref.in_features for ref in refs)
    counts, gap = row_mix([ref.out_features for ref in refs],
                          [ref.in_features * low_step.bits_per_weight(ref) for ref in refs],
                          [ref.in_features * high_step.bits_per_weight(ref) for ref in refs],
                          target_linear_bits * total)  # fmt: skip
    weights = [splice_rows(lo, hi, k) for lo, hi, k in zip(low_term.weights, high_term.weights, counts,
                                                           strict=True)]  # fmt: skip
    rows = [np.concatenate([hi[:k], lo[k:]]) for lo, hi, k in zip(low_term.rows, high_term.rows, counts,
                                                                  strict=True)]  # fmt: skip
    return meter.term(weights, rows), target_linear_bits + gap / total


def measure_quantizer(meter: ViewMeter, evaluator: ResidualStreamEvaluator | None, points: StudyPoints,
                      term_prefix: str, widths: Sequence[int], levels: pd.DataFrame, log: Callable[[str], None],
                      end_to_end_max_bits: int | None = None) -> None:  # fmt: skip
    """Points of ``term_prefix`` (``<quantizer>:{bits}:<group>``) at every width (end to end up to
    ``end_to_end_max_bits``), and in every view the model spliced from two consecutive widths at every level's
    size that they bracket (the exact row splice: layer errors add over rows, so no view interpolates)."""
    quantizer, group = term_prefix.split(":{bits}:")
    series = f"{quantizer}_{group}"
    steps = {bits: _step(term_prefix.format(bits=bits)) for bits in sorted(widths)}
    bits_of = {bits: _linear_bits(meter, step) for bits, step in steps.items()}
    targets = levels.drop_duplicates("removed_fraction")[["removed_fraction", "bits_per_linear_weight"]]
    previous: tuple[LayerStep, TermWeights] | None = None
    for bits, step in steps.items():
        clock = StepClock()
        weights = clock(meter.compress, step)
        local = clock(meter.local_errors, weights)
        alone = evaluator if end_to_end_max_bits is None or bits <= end_to_end_max_bits else None
        points.add(series, "quantization", step.text, bits_of[bits], local,
                   clock(_evaluate, meter, weights.weights, alone))  # fmt: skip
        log(f"{step.text} measured ({clock})")
        if previous is not None:
            for fraction, target in targets.itertuples(index=False):
                if bracketing_widths(bits_of, target) == (bits - 1, bits):
                    _measure_splice(meter, evaluator, points, series, previous, (step, weights), fraction, target,
                                    bits)  # fmt: skip
        previous = (step, weights) if bits + 1 in steps else None


def _measure_splice(meter: ViewMeter, evaluator: ResidualStreamEvaluator | None, points: StudyPoints, series: str,
                    low: tuple[LayerStep, TermWeights], high: tuple[LayerStep, TermWeights], fraction: float,
                    target: float, bits: int) -> None:  # fmt: skip
    """The model spliced from widths ``bits − 1`` and ``bits`` at the size of removing ``fraction``, in every
    view (its layer errors from the spliced weights themselves)."""
    mixed, reached = mixed_weights(meter, low, high, target)
    local = meter.local_errors(mixed)
    result = _evaluate(meter, mixed.weights, evaluator)
    points.add(series, "quantization", f"{series}:{bits - 1}|{bits}@{fraction:.6f}", reached, local, result,
               mixed=True, removed_fraction=fraction,
               size_gap_bits=points.sizes.decoder_bits(reached) - points.sizes.decoder_bits(target))  # fmt: skip


def measure_pruner(meter: ViewMeter, evaluator: ResidualStreamEvaluator | None, points: StudyPoints,
                   pruner: str, sparsities: Sequence[float], conventions: Sequence[str],
                   log: Callable[[str], None], evaluated: Collection[float] | None = None) -> None:  # fmt: skip
    """Points of ``pruner`` at every sparsity, one row per view and mask convention (the bits differ by convention,
    the errors do not); end to end only the sparsities in ``evaluated`` (all when None)."""
    for sparsity in sorted(set(sparsities)):
        clock = StepClock()
        step = _step(f"{pruner}:{sparsity:.9f}")
        weights = clock(meter.compress, step)
        alone = evaluator if evaluated is None or any(abs(sparsity - s) < 1e-12 for s in evaluated) else None
        errors, result = clock(meter.local_errors, weights), clock(_evaluate, meter, weights.weights, alone)
        for name in conventions:
            bits = sparse_bits_per_weight(float(step.params["sparsity"]), mask_convention(name))
            points.add(pruner, "pruning", step.text, bits, dict(errors), result, mask_convention=name)
        log(f"{step.text} measured ({clock})")


def width_series(option: str) -> str:
    """The curve a width pruning option belongs to: ``shrink_mlp``, ``shrink_heads`` or ``shrink_mlp+heads``, with
    ``_norefit`` when the consumers keep their columns and ``_<score>`` for a score other than the output error."""
    settings = ShrinkSettings(**parse_shrink_term(tuple(option.split(":"))))
    parts = [name for name in ("mlp", "heads") if getattr(settings, name)]
    suffix = ("" if settings.refit else "_norefit") + ("" if settings.score == "output" else f"_{settings.score}")
    return f"shrink_{'+'.join(parts)}{suffix}"


def width_term(meter: ViewMeter, option: str) -> tuple[TermWeights, float]:
    """Structured width pruning ``shrink:<option>`` as same-shape weights of every covered layer
    (:func:`measure.compress.shrink.shrink.zeroed_weights`: the removed rows of gate / up (q, k, v) and columns of
    down (o) zeroed, the kept columns refit; functionally the physically shrunk model), chosen on the meter's
    calibration Grams, with each layer's relative output errors on the scoring Grams
    (:meth:`measure.removal.views.ViewMeter.row_errors`; a zeroed producer row counts its whole output
    energy); and the removed fraction f of the decoder parameters."""
    grams = {ref.name: meter.captured.gram_for(ref.name).to_numpy() for ref in meter.refs}
    plan = plan_shrink(meter.arch.model, (), ShrinkSettings(**parse_shrink_term(tuple(option.split(":")))), grams)
    zeroed = zeroed_weights(plan)
    weights, rows = [], []
    for index, ref in enumerate(meter.refs):
        weight = ref.weight().detach()
        replaced = zeroed.get(ref.name, weight)
        weights.append(replaced)
        rows.append(meter.row_errors(index, replaced) if ref.name in zeroed else np.zeros((ref.out_features, 3)))
    return meter.term(weights, rows), plan.removed_fraction


def measure_width(meter: ViewMeter, evaluator: ResidualStreamEvaluator | None, points: StudyPoints, option: str,
                  log: Callable[[str], None]) -> None:  # fmt: skip
    """Points of structured width pruning ``shrink:<option>`` (:func:`width_term`) in every view, at its size:
    the removed fraction f of the decoder parameters gives b(f) = 16(1 − f) bits per decoder parameter, counted
    like block removal (no mask: the model is smaller)."""
    clock = StepClock()
    term, fraction = clock(width_term, meter, option)
    linear_bits = points.sizes.linear_bits(removal_bits_per_weight(fraction))
    local = clock(meter.local_errors, term)
    points.add(width_series(option), WIDTH_FAMILY, f"shrink:{option}", linear_bits, local,
               clock(_evaluate, meter, term.weights, evaluator), removed_fraction=fraction)  # fmt: skip
    log(f"shrink:{option} measured ({clock})")


def measure_reference(meter: ViewMeter, points: StudyPoints, linear_bits: Sequence[float]) -> pd.DataFrame:
    """The Gaussian rate–distortion reference (:mod:`theory.rate_distortion`: independent Gaussian coordinates in
    each layer's Gram eigenbasis, reverse water-filling on λ_j·s_j²; a reference for Gaussian weights, not a bound
    on the real ones) at every size in ``linear_bits`` (bits per linear weight), on the headline scoring Grams,
    into ``points``: per layer at a uniform rate, aggregated like the layer views (``gaussian_rd``), and with the
    rate water-filled jointly over all the decoder's layers (``gaussian_rd_joint``,
    :func:`theory.rate_distortion.decoder_rd_relative_error`). Returns the per-layer values at the integer sizes
    (layer, block, bits_per_linear_weight, rd_relative_error, rd_sqnr_db)."""
    spectra = [layer_spectrum(meter.scoring.scoring_inputs(ref.name)[0].double().numpy(),
                              ref.weight().detach().to("cpu", torch.float64).numpy())
               for ref in meter.refs]  # fmt: skip
    rows = []
    sizes = sorted(set(linear_bits))
    heights = [ref.out_features for ref in meter.refs]
    joint = {view: decoder_rd_relative_error(spectra, heights, sizes, weighting)
             for view, weighting in (("layer_energy", "energy"), ("layer_parameters", "parameters"))}
    for k, bits in enumerate(sizes):
        relative = np.array([rd_relative_error(spectrum, bits) for spectrum in spectra])
        errors = layer_view_errors(meter.layers, relative)
        points.add(RD_SERIES, "reference", f"{RD_SERIES}:{bits:.6f}", bits, errors)
        points.add(RD_JOINT_SERIES, "reference", f"{RD_JOINT_SERIES}:{bits:.6f}", bits,
                   {view: float(values[k]) for view, values in joint.items()})
        if float(bits).is_integer():
            rows += [
                {"layer": ref.name, "block": ref.block_index, "bits_per_linear_weight": bits,
                 "rd_relative_error": r, "rd_sqnr_db": relative_error_db(r)}
                for ref, r in zip(meter.refs, relative, strict=True)
            ]
    return pd.DataFrame(rows)
