"""Does ShortGPT-style block removal fit the bounds of pruning and quantization at equal size? The study.

**Levels.** For each ordering (Block Influence, angular rule, reverse, random) n = 1..``max_removed`` blocks are
removed; level n removes a fraction f of the decoder parameters and keeps b(f) = 16(1 − f) bits per decoder
parameter (:mod:`measure.removal.equal_size`).

**Views** (:mod:`measure.removal.views`). Every level and every compression term is measured on one signal per
view, with one denominator for both: the layer view (energy- and parameter-weighted over the decoder's linear
layers), the block view (residual stream, over the blocks' update energy) and end to end (KL to the original on
the evaluation windows).

**Exactly equal size.** Quantizers (RTN and GPTQ in each group setting) are measured at integer bit widths
(2..16). In the local views a quantizer's value at b(f) is interpolated in dB between the two widths one bit
apart that bracket it, and marked interpolated; end to end it is a real model at b(f): the two bracketing widths
spliced row by row in every layer (:func:`measure.removal.equal_size.row_mix`), within half a row of the size (the
gap is
reported in ``size_gap_bits``). Pruners run at the equal-size sparsity s(f) of each mask convention (free as in
Kuzmin et al. 2023, entropy-coded, bitmap), which sits at b(f) exactly.

**Reference.** The Gaussian rate–distortion limit of every linear layer (:mod:`theory.rate_distortion`) at the
equal-size bits per linear weight, aggregated like the layer view: the limit for Gaussian weights with each
layer's second-order statistics, not a bound on the actual weights.

**Answer** (:func:`answer_table`). Per view, level and mask convention: the removal's error; the best and the worst
method at b(f); the RD reference (layer views); the margins (removal dB − method dB; negative: removal worse);
and the equivalent bits of every method — the size at which the method makes the removal's error, read off its
curve (:func:`measure.removal.equal_size.equivalent_bits`; below the curve's smallest size it is censored, never
extrapolated).

**End to end.** :class:`ResidualStreamEvaluator` caches the original model's residual stream at every block
boundary and its reference log-probabilities on the pinned evaluation windows; a variant that equals the
original before block ``start`` is scored by running blocks start..L−1 only. It gives what
:func:`measure.evaluation.perplexity.evaluate_perplexity` gives for the variant with the original as reference
(tested), for a fraction of the cost.

**Error propagation.** For single-block removals and for the distinct removal sets: the Pearson correlation of
log10(local error) with log10(KL to the original) and the Spearman rank correlation of the two.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import nn

from measure.capture.gram import GramAccumulator
from measure.capture.memory import GIB, peak_rss_bytes, rss_bytes
from measure.capture.statistics import Capture, capture, register_gram_hooks
from measure.compress.importance import (
    Importance,
    angular_table,
    choose_units,
    get_ordering,
    importance_table,
    measure_importance,
    normalized_relative_importance,
)
from measure.compress.remove import (
    Removal,
    removed_fraction,
    sublayer_parameter_count,
    sublayer_removed,
)
from measure.compress.spec import parse_term_list
from measure.evaluation.perplexity import PerplexityResult, TokenWindows, interval_columns
from measure.evaluation.residual import ResidualStreamEvaluator, first_windows
from measure.models.architecture import Architecture, describe, parameter_counts
from measure.removal.answer import (
    EndToEndTokens,
    answer_table,
    end_to_end_intervals,
    end_to_end_table,
    removal_term,
)
from measure.removal.equal_size import DecoderSizes, mask_convention
from measure.removal.terms import (
    StudyPoints,
    measure_pruner,
    measure_quantizer,
    measure_reference,
    measure_width,
    width_series,
)
from measure.removal.views import (
    LOCAL_VARIANT_COLUMNS,
    LOCAL_VIEWS,
    SINK_POSITIONS,
    VIEWS,
    ResidualStream,
    ScoringData,
    ViewMeter,
    check_views,
)
from measure.removal.width_options import measured_options, width_options_table
from theory.accounting import (
    check_bits,
    removal_bits_per_weight,
)
from theory.errors import PvqError

DEFAULT_ORDERINGS = ("bi", "angular", "reverse", "random")
ALL_BITS = tuple(range(2, 17))
"""Integer widths of the full study's quantizers: every width from 2 to 16 bits."""


def _all_bits() -> dict[str, tuple[int, ...]]:
    return {"rtn": ALL_BITS, "gptq": ALL_BITS}


@dataclass(frozen=True)
class StudySettings:
    """Sizes and choices of :func:`run_study` (recorded with its tables).

    ``quantizer_bits[q]``: the integer widths quantizer q is measured at (each also in every group of ``groups``);
    ``pruner_sparsities``: sparsities measured besides the equal-size ones of every level and mask convention;
    ``widths``: structured width pruning options, each the part after ``shrink:`` of a shrink term (``mlp=0.25``,
    ``heads=0.34:norefit``), measured in every view at their own size (no removal level reads them), each as the
    model takes it (:mod:`measure.removal.width_options`: adapted to a feasible count of units, or left out);
    ``block_sequences``: how many sequences (the first ones) the block view runs (all when None);
    ``workers``: processes computing compressed weights (one per core when None); ``end_to_end_max_bits``:
    quantizer widths above it are measured in the local views and spliced into the equal-size models, but not
    evaluated end to end alone (None: every width); ``end_to_end_conventions``: the mask conventions whose
    equal-size sparsities are evaluated end to end (None: all; ``pruner_sparsities`` always);
    ``answer_levels``: the removal counts at which every method is read at exactly b(f) (equal-size sparsities,
    spliced quantizers) and the removal sets are evaluated end to end (None: every level; the others keep their
    local views); ``end_to_end_orderings``: the orderings whose removal sets are evaluated end to end (None:
    all)."""

    max_removed: int = 8
    orderings: tuple[str, ...] = DEFAULT_ORDERINGS
    seed: int = 0
    batch_size: int = 4
    probe_windows: int = 4
    sublayers: bool = True
    quantizers: tuple[str, ...] = ("rtn", "gptq")
    groups: tuple[str, ...] = ("g128", "channel")
    quantizer_bits: Mapping[str, tuple[int, ...]] = field(default_factory=_all_bits)
    pruners: tuple[str, ...] = ("sparsegpt",)
    pruner_sparsities: tuple[float, ...] = (0.5, 0.75, 0.875)
    mask_conventions: tuple[str, ...] = ("free", "entropy")
    widths: tuple[str, ...] = ()
    views: tuple[str, ...] = tuple(VIEWS)
    block_sequences: int | None = None
    workers: int | None = None
    end_to_end_max_bits: int | None = None
    end_to_end_conventions: tuple[str, ...] | None = None
    answer_levels: tuple[int, ...] | None = None
    end_to_end_orderings: tuple[str, ...] | None = None


def check_settings(settings: StudySettings, blocks: int | None = None) -> None:
    """One clear PvqError for the first bad choice in ``settings`` (and removal levels beyond ``blocks - 1``)."""
    if blocks is not None and not 1 <= settings.max_removed <= blocks - 1:
        raise PvqError(f"the study removes 1..max_removed blocks; max_removed must lie in 1..{blocks - 1} "
                       f"(the model has {blocks} blocks), got {settings.max_removed}")  # fmt: skip
    if settings.max_removed < 1:
        raise PvqError(f"max_removed must be at least 1, got {settings.max_removed}")
    for name in settings.orderings:
        if get_ordering(name).unit != "block":
            raise PvqError(f"the study's orderings remove whole blocks; {name!r} removes sublayers")
    check_views(settings.views)
    for name in settings.mask_conventions:
        mask_convention(name)
    strangers = set(settings.end_to_end_orderings or ()) - set(settings.orderings)
    if strangers:
        raise PvqError(f"end_to_end_orderings {sorted(strangers)} are not among the orderings "
                       f"{list(settings.orderings)}; choose some of those")  # fmt: skip
    outside = [n for n in settings.answer_levels or () if not 1 <= n <= settings.max_removed]
    if outside:
        raise PvqError(f"answer_levels {outside} lie outside the removal levels 1..{settings.max_removed}")
    unknown = set(settings.end_to_end_conventions or ()) - set(settings.mask_conventions)
    if unknown:
        raise PvqError(f"end_to_end_conventions {sorted(unknown)} are not among the mask conventions "
                       f"{list(settings.mask_conventions)}; choose some of those")  # fmt: skip
    for quantizer in settings.quantizers:
        if quantizer not in settings.quantizer_bits:
            raise PvqError(f"quantizer {quantizer!r} has no bit widths; give quantizer_bits[{quantizer!r}]")
        for bits in settings.quantizer_bits[quantizer]:
            check_bits(bits, 2, 16)
        parse_term_list(",".join(f"{quantizer}:4:{group}" for group in settings.groups))
    for pruner in settings.pruners:
        parse_term_list(f"{pruner}:0.5")
    for option in settings.widths:
        width_series(option)
    for sparsity in settings.pruner_sparsities:
        if not 0 <= sparsity < 1:
            raise PvqError(f"pruner sparsities must lie in [0, 1), got {sparsity}")
    if settings.probe_windows < 1 or (settings.block_sequences is not None and settings.block_sequences < 1):
        raise PvqError("probe_windows and block_sequences must be at least 1")


def check_for_model(
    settings: StudySettings, model: nn.Module, windows: TokenWindows | None = None
) -> pd.DataFrame:
    """Everything ``settings`` ask of ``model``, checked from its config and module structure before any
    calibration data is read or any forward pass runs (a model on the meta device is checked like a loaded one):
    :func:`check_settings` with the model's block count, ``probe_windows`` against the evaluation ``windows`` when
    given, and each width option as the model takes it: the width_options table
    (:func:`measure.removal.width_options.width_options_table`: measured as requested, adapted to the nearest
    feasible whole number of units, or left out with the reason). One PvqError for the first refused setting."""
    check_settings(settings, len(describe(model).blocks))
    if windows is not None and settings.probe_windows > windows.input_ids.shape[0]:
        raise PvqError(f"probe_windows {settings.probe_windows} exceeds the {windows.input_ids.shape[0]} "
                       "evaluation windows")  # fmt: skip
    return width_options_table(model, settings.widths)


def decoder_sizes(arch: Architecture) -> DecoderSizes:
    """Decoder parameters and the weights of its linear layers."""
    linear = sum(ref.out_features * ref.in_features for ref in arch.linears)
    return DecoderSizes(decoder=parameter_counts(arch)["decoder"], linear=linear)


def removal_levels(importance: Importance, arch: Architecture, settings: StudySettings) -> pd.DataFrame:
    """One row per (ordering, n removed blocks): the blocks, f, b(f) and the equal-size bits per linear weight."""
    sizes = decoder_sizes(arch)
    rows = []
    for name in settings.orderings:
        for count in range(1, settings.max_removed + 1):
            _, blocks = choose_units(name, importance, count, settings.seed)
            fraction = removed_fraction(arch, Removal(blocks=blocks))
            rows.append({"ordering": name, "removed": count, "blocks": ",".join(map(str, blocks)),
                         **sizes.equal_size(fraction)})  # fmt: skip
    return pd.DataFrame(rows)


def _blocks_of(text: str) -> list[int]:
    return [int(i) for i in text.split(",")] if text else []


def _scores(result: PerplexityResult) -> dict[str, float]:
    return {"perplexity": result.perplexity, "kl_to_reference_nats": result.kl_to_reference_nats}


def measure_levels(levels: pd.DataFrame, meter: ViewMeter, evaluator: ResidualStreamEvaluator | None,
                   tokens: EndToEndTokens | None = None, answer_levels: Sequence[int] | None = None,
                   orderings: Sequence[str] | None = None) -> pd.DataFrame:  # fmt: skip
    """``levels`` with the removal's error in every local view (``removal_error_<view>``, and its variants
    ``removal_error_<view>_<variant>``) and, with an evaluator, PPL, KL and their intervals of each distinct
    removal set (evaluated once per set, only at the removal counts ``answer_levels`` and of the ``orderings`` when
    given, NaN elsewhere; its per-token KL kept in ``tokens``)."""
    local = {text: meter.removal_errors(_blocks_of(text)) for text in levels["blocks"].unique()}
    columns = {f"removal_error_{view}": [local[text][view] for text in levels["blocks"]] for view in LOCAL_VIEWS}
    for view in LOCAL_VIEWS:
        for column in LOCAL_VARIANT_COLUMNS:
            variant = column.removeprefix("error_")
            if variant in local[levels["blocks"].iloc[0]]["variants"][view]:
                columns[f"removal_error_{view}_{variant}"] = [local[text]["variants"][view][variant]
                                                              for text in levels["blocks"]]  # fmt: skip
    levels = levels.assign(**columns)
    if evaluator is None:
        return levels
    chosen = levels if answer_levels is None else levels[levels["removed"].isin(list(answer_levels))]
    chosen = chosen if orderings is None else chosen[chosen["ordering"].isin(list(orderings))]
    results = {text: evaluator.evaluate(_blocks_of(text)) for text in chosen["blocks"].unique()}
    if tokens is not None:
        for text, result in results.items():
            tokens.add(removal_term(text), result)
    missing = {"perplexity": math.nan, "kl_to_reference_nats": math.nan, **end_to_end_intervals(None)}
    found = {text: {**_scores(result), **end_to_end_intervals(result)} for text, result in results.items()}
    rows = [found.get(text, missing) for text in levels["blocks"]]
    return levels.assign(removal_error_end_to_end=[row["kl_to_reference_nats"] for row in rows],
                         **{column: [row[column] for row in rows] for column in missing})  # fmt: skip


def held_out_scoring(model: nn.Module, arch: Architecture, windows: TokenWindows, calibration: Any,
                     calibration_stream: ResidualStream, settings: StudySettings) -> ScoringData:  # fmt: skip
    """Where the local views are scored (:class:`measure.removal.views.ScoringData`): Grams of the evaluation
    windows without and with their first :data:`measure.removal.views.SINK_POSITIONS` positions, the block view's
    stream on the first ``block_sequences`` evaluation windows, and the calibration data as the in-sample
    variant."""
    batches = list(windows.input_ids.split(settings.batch_size))
    sink_grams: dict[str, GramAccumulator] = {}  # the sink positions' input rows (no Gram), in the same pass
    keep = SINK_POSITIONS * windows.input_ids.shape[0]
    held_out = capture(model, batches, arch=arch, positions=slice(SINK_POSITIONS, None),
                       block_hooks=lambda block: register_gram_hooks(
                           block, sink_grams, keep, slice(0, SINK_POSITIONS), accumulate=False))  # fmt: skip
    sinks = Capture(sink_grams, held_out.group_of, held_out.blocks, held_out.first_last_token, held_out.mode)
    stream = ResidualStream.record(model, arch, list(windows.input_ids[: settings.block_sequences]
                                                     .split(settings.batch_size)))  # fmt: skip
    return ScoringData(held_out, sinks, calibration, stream, calibration_stream, SINK_POSITIONS)


def propagation_correlation(local_error: Sequence[float], kl: Sequence[float]) -> dict[str, float]:
    """Pearson r of log10(local error) vs log10(KL), Spearman ρ of the two, and n (positive pairs only)."""
    pairs = [(e, k) for e, k in zip(local_error, kl, strict=True) if e > 0 and k > 0]
    if len(pairs) < 3:
        return {"pearson_log10": math.nan, "spearman": math.nan, "n": len(pairs)}
    local, divergence = np.log10(np.array(pairs)).T
    return {
        "pearson_log10": float(stats.pearsonr(local, divergence).statistic),
        "spearman": float(stats.spearmanr(local, divergence).statistic),
        "n": len(pairs),
    }


@dataclass
class RemovalStudy:
    """The study's tidy tables by name and a summary (correlations, base perplexity, timings in seconds)."""

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def unit_table(importance: Importance, arch: Architecture) -> pd.DataFrame:
    """:func:`measure.compress.importance.importance_table` with each unit's parameters, the decoder fraction they
    hold and
    the bits per weight of equal compression, plus the BI rank (0 = ShortGPT removes it first)."""
    table = importance_table(importance)
    decoder = parameter_counts(arch)["decoder"]
    parameters = [
        sum(p.numel() for p in arch.blocks[row.block].module.parameters()) if row.unit == "block"
        else sublayer_parameter_count(arch.blocks[row.block], row.unit)
        for row in table.itertuples()
    ]  # fmt: skip
    fraction = np.array(parameters) / decoder
    bits = [removal_bits_per_weight(f) for f in fraction]
    table = table.assign(parameters=parameters, removed_fraction=fraction, bits_per_decoder_parameter=bits)
    table["rank"] = table.groupby("unit")["influence"].rank(method="first").astype(int) - 1
    return table


def _single_units(
    importance: Importance, arch: Architecture, evaluator: ResidualStreamEvaluator, sublayers: bool
) -> pd.DataFrame:
    """Each block (and, with ``sublayers``, each attention and MLP) removed alone: its influence, local removal
    error, parameters, PPL and KL on the evaluator's windows, and NRI."""
    base = evaluator.evaluate()
    table = unit_table(importance, arch)
    if not sublayers:
        table = table[table["unit"] == "block"]
    rows = []
    for row in table.itertuples():
        if row.unit == "block":
            result = evaluator.evaluate([row.block])
        else:
            with sublayer_removed(arch, row.unit, row.block):
                result = evaluator.evaluate(start=row.block)
        rows.append({
            "unit": row.unit, "block": row.block, "influence": row.influence,
            "removal_relative_error": row.removal_relative_error, "removal_sqnr_db": row.removal_sqnr_db,
            "parameters": row.parameters, **_scores(result), "base_perplexity": base.perplexity,
            "nri": normalized_relative_importance(base.perplexity, result.perplexity, row.parameters),
            "windows": evaluator.windows.input_ids.shape[0],
        })  # fmt: skip
    return pd.DataFrame(rows)


def _block_updates(meter: ViewMeter) -> np.ndarray:
    """Each block's update energy Σ_t>s ‖y_t − x_t‖² over the headline positions (sinks out)."""
    return meter.update_energy[:, :, meter.scoring.sink_positions:].sum(axis=(1, 2))


def block_shares(meter: ViewMeter) -> pd.DataFrame:
    """Per block: its share of the linear layers' output energy, of their weights, and of the blocks' update
    energy Σ‖y − x‖² (what the layer and block views charge for removing it)."""
    layers = meter.layers.groupby("block", as_index=False)[["output_energy", "parameters"]].sum()
    updates = _block_updates(meter)
    return pd.DataFrame({
        "block": layers["block"], "layer_energy_share": layers["output_energy"] / layers["output_energy"].sum(),
        "parameter_share": layers["parameters"] / layers["parameters"].sum(),
        "update_energy_share": updates[layers["block"]] / updates.sum(),
    })  # fmt: skip


def run_study(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    windows: TokenWindows,
    settings: StudySettings = StudySettings(),
    log: Callable[[str], None] = lambda message: None,
    on_table: Callable[[str, pd.DataFrame], None] = lambda name, table: None,
    stored_bits: float | None = None,
) -> RemovalStudy:
    """The whole comparison on one model (module docstring); the model is left as it was. Settings are checked
    against the model before any work (:func:`check_for_model`).

    Tables (each passed to ``on_table`` as soon as it is final): width_options (how the model takes each width
    option: as requested, adapted or left out, with the reason), units (importance of blocks and sublayers),
    angular (d(ℓ, n) for n = 1..max_removed), single_units (each block, attention or MLP removed alone on the
    first ``probe_windows`` windows: local error, PPL, KL, NRI), layers (each linear's output energy and share),
    blocks (each block's energy, weight and update shares), layer_rd (each linear's Gaussian rate–distortion
    reference at 2..16 bits per weight), levels (one row per ordering and removal count:
    blocks, f, b(f), the removal's error in every view, PPL, KL), points (every method's error per view and
    setting, the RD reference, the spliced equal-size models, the width pruning options), view_shares (the share
    of each local view's denominator held by sink positions and the top 1 % of positions), answer
    (:func:`answer_table`, verdicts at base 16 and at ``stored_bits``, the model's stored bits per parameter) and
    end_to_end. The local views are scored on the evaluation windows, sink positions out
    (:func:`held_out_scoring`); end-to-end numbers carry 95 % block-bootstrap intervals.
    """
    widths = check_for_model(settings, model, windows)
    arch = describe(model)
    study = RemovalStudy()
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(step: str, **tables: pd.DataFrame) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[step] = now - clock
        clock = now
        log(f"{step}: {seconds[step]:.1f} s (resident memory {rss_bytes() / GIB:.1f} GiB, "
            f"peak {peak_rss_bytes() / GIB:.1f} GiB)")
        for name, table in tables.items():
            study.tables[name] = table
            on_table(name, table)

    importance = measure_importance(model, batches, arch)
    units = unit_table(importance, arch)
    levels = removal_levels(importance, arch, settings)
    lap("importance", width_options=widths, units=units,
        angular=angular_table(importance.states, settings.max_removed))  # fmt: skip

    probe_windows = first_windows(windows, settings.probe_windows)
    probe = ResidualStreamEvaluator(model, probe_windows, settings.batch_size, arch)
    single = _single_units(importance, arch, probe, settings.sublayers)
    lap("single_units", single_units=single)

    sequences = torch.cat(list(batches))[: settings.block_sequences]
    stream = ResidualStream.record(model, arch, list(sequences.split(settings.batch_size)))
    scoring = held_out_scoring(model, arch, windows, importance.capture, stream, settings)
    meter = ViewMeter(arch, importance.capture, stream, settings.workers, scoring)
    evaluator = None
    if "end_to_end" in settings.views:
        evaluator = ResidualStreamEvaluator(model, windows, settings.batch_size, arch)
    sizes = decoder_sizes(arch)
    points = StudyPoints(sizes, settings.views)
    if evaluator is not None:
        base = evaluator.evaluate()
        study.summary["base"] = {**_scores(base), **interval_columns(base)}
    levels = measure_levels(levels, meter, evaluator, points.tokens, settings.answer_levels,
                            settings.end_to_end_orderings)
    read = levels if settings.answer_levels is None else levels[levels["removed"].isin(settings.answer_levels)]
    lap("levels", layers=meter.layers, blocks=block_shares(meter), levels=levels,
        view_shares=meter.denominator_shares())

    for quantizer in settings.quantizers:
        for group in settings.groups:
            measure_quantizer(meter, evaluator, points, f"{quantizer}:{{bits}}:{group}",
                              settings.quantizer_bits[quantizer], read, log, settings.end_to_end_max_bits)
    fractions = read["removed_fraction"].unique()
    equal = [sizes.sparsity(fraction, name) for name in settings.mask_conventions for fraction in fractions]
    sparsities = [*settings.pruner_sparsities, *equal]
    conventions = settings.end_to_end_conventions or settings.mask_conventions
    evaluated = {*settings.pruner_sparsities,
                 *(sizes.sparsity(fraction, name) for fraction in fractions for name in conventions)}
    for pruner in settings.pruners:
        measure_pruner(meter, evaluator, points, pruner, sparsities, settings.mask_conventions, log, evaluated)
    for option in measured_options(widths):
        measure_width(meter, evaluator, points, option, log)
    reference = pd.DataFrame()
    if set(settings.views) & {"layer_energy", "layer_parameters"}:
        reference = measure_reference(meter, points, [*map(float, ALL_BITS), *levels["bits_per_linear_weight"]])
    table = points.table()
    lap("methods", points=table, layer_rd=reference,
        answer=answer_table(levels, table, settings.views, settings.mask_conventions, points.tokens, stored_bits))
    if evaluator is not None:
        on_table("end_to_end", study.tables.setdefault("end_to_end", end_to_end_table(levels, table)))
        _correlations(study, single, levels)
    study.summary["seconds"] = seconds
    return study


def _correlations(study: RemovalStudy, single: pd.DataFrame, levels: pd.DataFrame) -> None:
    """Error propagation (module docstring): single units per kind, and the distinct removal sets per view."""
    for unit, rows in single.groupby("unit"):
        study.summary[f"correlation_single_{unit}"] = propagation_correlation(
            rows["removal_relative_error"], rows["kl_to_reference_nats"]
        )
    distinct = levels.drop_duplicates("blocks")
    for view in LOCAL_VIEWS:
        study.summary[f"correlation_levels_{view}"] = propagation_correlation(
            distinct[f"removal_error_{view}"], distinct["kl_to_reference_nats"]
        )
