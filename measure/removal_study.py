"""Layer removal measured against pruning and quantization at equal compression: does ShortGPT fit the bounds?

**Equal compression.** Removing units that hold a fraction f of the decoder parameters keeps (1 − f)·16 bits per
original decoder weight (:func:`theory.accounting.removal_bits_per_weight`). A quantizer matches it at
b(f) = 16(1 − f) bits per weight, a pruner at sparsity s(f) = 1 − b(f)/16 = f under the paper's free-mask
convention (:func:`theory.accounting.equal_compression_sparsity`, Kuzmin et al. 2023, Sec. 3). A table holds
discrete settings, so each method is compared at its *largest tabulated bits per weight not exceeding b(f)*
(within :data:`TOLERANCE_BITS`): at equal or higher compression than the removal. Errors fall as bits grow, so a
removal worse than every method there is worse than them at equal compression by at least the reported margin.

**Error aggregation** (both are "fraction of local output energy lost", with original inputs):

* compression — layer ℓ with input Gram H_ℓ loses e_ℓ = tr(ΔW H_ℓ ΔWᵀ) of its output energy
  E_ℓ = tr(W H_ℓ Wᵀ) (the ledger's relative error r_ℓ = e_ℓ / E_ℓ). A group G of layers (one block, or the whole
  decoder) loses R_G = Σ_G r_ℓ E_ℓ / Σ_G E_ℓ (energy-weighted); its bits per weight are the parameter-weighted
  mean over G.
* removal — block i replaced by the identity loses ‖y_i − x_i‖² of its output energy ‖y_i‖² (x_i, y_i its
  residual input and output over all calibration tokens). Removing a set S loses
  R_S = Σ_{i∈S} ‖y_i − x_i‖² / Σ_{all i} ‖y_i‖² of the decoder's block output energy (kept blocks lose nothing);
  one block on its own loses ‖y_i − x_i‖² / ‖y_i‖².

Caveat: the two live in different output spaces (linear-layer outputs vs the residual stream after a block),
so the comparison is between fractions of energy lost, not between errors of one signal; the end-to-end
perplexity and KL tables compare the same signal. SQNR = −10·log10 R dB throughout.

**Verdict.** At a removal level, the model-level SQNRs of the methods (ledger terms, and bounds when given) at
their matched bits span a range; the removal is ``inside`` when its SQNR lies in the range, else ``below``
(worse than every method) or ``above`` (better than every method), ``margin_db`` being the signed distance in
dB to the nearest end of the range (0 inside).

**End to end.** :class:`ResidualStreamEvaluator` caches the original model's residual stream at every block
boundary and its reference log-probabilities on the pinned evaluation windows; a variant that equals the
original before block ``start`` is scored by running blocks start..L−1 only. It gives what
:func:`measure.evaluation.perplexity.evaluate_perplexity` gives for the variant with the original as reference
(tested), for a fraction of the cost.

**Error propagation.** For single-block removals and for every evaluated removal set: the Pearson correlation of
log10(local error) with log10(KL to the original) and the Spearman rank correlation of the two.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import nn

from measure.architecture import Architecture, describe, parameter_counts
from measure.blocks import BlockInputs, record_block_inputs, run_block
from measure.capture import BlockStatistics, Capture
from measure.evaluation.perplexity import (
    LOGITS_BUDGET_BYTES,
    PerplexityResult,
    TokenWindows,
    chunk_statistics,
    final_hidden_states,
    output_head,
)
from measure.importance import (
    Importance,
    angular_table,
    choose_units,
    importance_table,
    measure_importance,
    normalized_relative_importance,
)
from measure.ledger import build_ledger, sqnr_db
from measure.removal import (
    Removal,
    check_block_indices,
    removed_fraction,
    sublayer_parameter_count,
    sublayer_removed,
)
from measure.spec import apply_spec
from theory.accounting import Convention, equal_compression_sparsity, removal_bits_per_weight
from theory.errors import PvqError

DEFAULT_ORDERINGS = ("bi", "angular", "reverse", "random")
LAYER_TABLE_COLUMNS = ("layer", "block", "method", "bits_per_weight", "relative_error")
"""Columns a per-layer table (ledger, bounds) must have; ``term`` and ``parameters`` are used when present."""
TOLERANCE_BITS = 0.01
"""A tabulated point matches b(f) when its bits per weight exceed b(f) by at most this much: pruners realize
integer counts of pruned weights per layer, so s(f) costs up to 16/(weights per layer) more bits than b(f)."""
PAPER_CONVENTION = Convention()
"""Free mask: pruning at sparsity s costs (1 − s)·16 bits per weight (Kuzmin et al. 2023, Sec. 3)."""


def equal_compression(fraction: float, convention: Convention = PAPER_CONVENTION) -> dict[str, float]:
    """Removed fraction f → bits per weight b(f) = 16(1 − f) and the pruning sparsity of equal size."""
    bits = removal_bits_per_weight(fraction)
    return {
        "removed_fraction": fraction,
        "bits_per_weight": bits,
        "sparsity": equal_compression_sparsity(bits, convention),
    }


def removal_set_error(blocks: Sequence[BlockStatistics], removed: Collection[int]) -> float:
    """R_S = Σ_{i∈S} ‖y_i − x_i‖² / Σ_i ‖y_i‖² (module docstring): decoder-level local error of removing S."""
    return sum(blocks[i].identity_error for i in removed) / sum(s.output_energy for s in blocks)


def layer_output_energy(arch: Architecture, captured: Capture) -> pd.DataFrame:
    """E_ℓ = tr(W H Wᵀ) of every captured (non-expert) linear layer: columns layer, output_energy."""
    grams: dict[str, torch.Tensor] = {}
    rows = []
    for ref in arch.linears:
        if ref.expert_index is not None:
            continue
        group = captured.group_of[ref.name]
        gram = grams.setdefault(group, captured.grams[group].gram)
        weight = ref.weight().double()
        rows.append({"layer": ref.name, "output_energy": float(((weight @ gram) * weight).sum())})
    return pd.DataFrame(rows)


def aggregate_layer_errors(table: pd.DataFrame, energy: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Energy-weighted relative error R_G and parameter-weighted bits of every term over groups ``by`` (module
    docstring); columns method, term, *by, bits_per_weight, relative_error, output_sqnr_db, layers."""
    missing = [c for c in LAYER_TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise PvqError(f"the per-layer table lacks columns {missing}; it needs {list(LAYER_TABLE_COLUMNS)}")
    merged = table.merge(energy, on="layer", how="inner")
    if merged.empty:
        raise PvqError("no layer of the per-layer table has a measured output energy; are they of the same model?")
    weight = merged["parameters"].astype(float) if "parameters" in merged else pd.Series(1.0, index=merged.index)
    if "term" not in merged:
        merged["term"] = merged["method"] + "@" + merged["bits_per_weight"].round(4).astype(str)
    merged = merged.assign(
        lost=merged["relative_error"] * merged["output_energy"],
        weighted_bits=merged["bits_per_weight"] * weight,
        weight=weight,
    )
    grouped = merged.groupby(["method", "term", *by], as_index=False).agg(
        lost=("lost", "sum"),
        output_energy=("output_energy", "sum"),
        weighted_bits=("weighted_bits", "sum"),
        weight=("weight", "sum"),
        layers=("layer", "nunique"),
    )
    relative = grouped["lost"] / grouped["output_energy"]
    return grouped.assign(
        bits_per_weight=grouped["weighted_bits"] / grouped["weight"],
        relative_error=relative,
        output_sqnr_db=[sqnr_db(r) for r in relative],
    )[["method", "term", *by, "bits_per_weight", "relative_error", "output_sqnr_db", "layers"]]


def matched_points(curves: pd.DataFrame, bits_per_weight: float) -> pd.DataFrame:
    """Per method, the tabulated point with the largest bits per weight not above ``bits_per_weight``."""
    eligible = curves[curves["bits_per_weight"] <= bits_per_weight + TOLERANCE_BITS]
    if eligible.empty:
        return eligible
    return eligible.loc[eligible.groupby("method")["bits_per_weight"].idxmax()]


def verdict(removal_sqnr_db: float, points: pd.DataFrame) -> dict[str, Any]:
    """Where ``removal_sqnr_db`` lies against the SQNR range of ``points`` (inside, below, above), margin in dB."""
    if points.empty:
        return {
            "range_low_db": math.nan, "range_high_db": math.nan, "range_low_term": None, "range_high_term": None,
            "methods": 0, "verdict": "no comparison", "margin_db": math.nan,
        }  # fmt: skip
    low = points.loc[points["output_sqnr_db"].idxmin()]
    high = points.loc[points["output_sqnr_db"].idxmax()]
    if removal_sqnr_db < low["output_sqnr_db"]:
        where, margin = "below", removal_sqnr_db - low["output_sqnr_db"]
    elif removal_sqnr_db > high["output_sqnr_db"]:
        where, margin = "above", removal_sqnr_db - high["output_sqnr_db"]
    else:
        where, margin = "inside", 0.0
    return {
        "range_low_db": float(low["output_sqnr_db"]),
        "range_high_db": float(high["output_sqnr_db"]),
        "range_low_term": low["term"],
        "range_high_term": high["term"],
        "methods": len(points),
        "verdict": where,
        "margin_db": float(margin),
    }


def verdict_table(levels: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """``levels`` (bits_per_weight, removal_sqnr_db per row) with the verdict against decoder-level ``curves``."""
    verdicts = [
        verdict(row.removal_sqnr_db, matched_points(curves, row.bits_per_weight)) for row in levels.itertuples()
    ]
    return pd.concat([levels.reset_index(drop=True), pd.DataFrame(verdicts)], axis=1)


def block_verdict_table(blocks: pd.DataFrame, block_curves: pd.DataFrame) -> pd.DataFrame:
    """Per block: its own removal SQNR against its layers' aggregated SQNR at the bits of equal compression."""
    verdicts = [
        verdict(row.removal_sqnr_db, matched_points(block_curves[block_curves["block"] == row.block],
                                                    row.bits_per_weight))
        for row in blocks.itertuples()
    ]  # fmt: skip
    return pd.concat([blocks.reset_index(drop=True), pd.DataFrame(verdicts)], axis=1)


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


def first_windows(windows: TokenWindows, count: int) -> TokenWindows:
    """The first ``count`` windows, with the protocol's max_windows and windows hash updated."""
    if not 1 <= count <= windows.input_ids.shape[0]:
        raise PvqError(f"asked for {count} evaluation windows; there are 1..{windows.input_ids.shape[0]}")
    input_ids, scored = windows.input_ids[:count], windows.scored[:count]
    digest = hashlib.sha256(input_ids.numpy().tobytes() + scored.numpy().tobytes()).hexdigest()
    protocol = replace(windows.protocol, max_windows=count, windows_sha256=digest)
    return TokenWindows(protocol=protocol, input_ids=input_ids, scored=scored)


class ResidualStreamEvaluator:
    """Perplexity and KL to the original model of variants equal to it before some block (module docstring).

    Construction runs the original once over ``windows`` and keeps the residual stream at every block boundary
    (L + 1 tensors per window batch); the reference logits are recomputed from the kept final hidden states
    chunk by chunk (caching them would take windows·L·|V|·4 bytes, 1.6 GB for 16 × 512 tokens and |V| = 49152).
    """

    def __init__(self, model: nn.Module, windows: TokenWindows, batch_size: int = 4,
                 arch: Architecture | None = None) -> None:  # fmt: skip
        self.arch = arch or describe(model)
        self.windows = windows
        batches = list(windows.input_ids.split(batch_size))
        self.predicts = [mask[:, 1:] for mask in windows.scored.split(batch_size)]
        self.targets = [ids[:, 1:][mask] for ids, mask in zip(batches, self.predicts, strict=True)]
        self.head = output_head(model)
        with torch.no_grad():
            inputs = record_block_inputs(model, self.arch, batches)
            self.kwargs = inputs.kwargs
            self.states = [inputs.hidden]
            for block in self.arch.blocks:
                self.states.append(run_block(self.arch, block.index, BlockInputs(self.states[-1], self.kwargs)))
            self._check_final(model, batches[0][:1])
            self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
            self.rows_per_chunk = max(1, LOGITS_BUDGET_BYTES // (4 * self.vocab_size * 2))
            self.reference = self._rows(self.states[-1])

    def _final(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden if self.arch.final_norm is None else self.arch.final_norm(hidden)

    def _rows(self, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
        """Final hidden states of the positions that predict a scored token, per window batch."""
        return [self._final(h)[:, :-1][mask] for h, mask in zip(hidden, self.predicts, strict=True)]

    def _check_final(self, model: nn.Module, probe: torch.Tensor) -> None:
        own = final_hidden_states(model, probe)
        ours = self._final(self.states[-1][0][:1])
        if own.shape != ours.shape or not torch.allclose(own, ours, rtol=1e-4, atol=1e-5 * float(own.abs().max())):
            raise PvqError(
                f"{type(model).__name__} does more than the final norm after its last block; "
                "the residual-stream evaluator does not support it (use evaluate_perplexity on each variant)"
            )

    def evaluate(self, skip: Collection[int] = (), start: int | None = None) -> PerplexityResult:
        """Score the model's current blocks from ``start`` on, skipping blocks ``skip`` (default start: the first
        skipped block, or L: the unchanged model). Blocks before ``start`` must be unchanged and kept."""
        blocks = len(self.arch.blocks)
        skipped = set(check_block_indices(skip, blocks))
        first_skipped = min(skipped, default=blocks)
        start = first_skipped if start is None else start
        if not 0 <= start <= first_skipped:
            raise PvqError(f"start block {start} must lie in 0..{first_skipped} (up to the first skipped block)")
        hidden = self.states[start]
        nll, kl = 0.0, 0.0
        with torch.no_grad():
            for index in range(start, blocks):
                if index not in skipped:
                    hidden = run_block(self.arch, index, BlockInputs(hidden, self.kwargs))
            for rows, targets, reference in zip(self._rows(hidden), self.targets, self.reference, strict=True):
                for first in range(0, len(targets), self.rows_per_chunk):
                    part = slice(first, first + self.rows_per_chunk)
                    logits, reference_logits = self.head(rows[part]), self.head(reference[part])
                    part_nll, part_kl = chunk_statistics(logits, targets[part], reference_logits)
                    nll += part_nll
                    kl += part_kl
        return PerplexityResult(
            n_windows=int(self.windows.input_ids.shape[0]),
            n_tokens=self.windows.n_scored,
            vocab_size=self.vocab_size,
            nll_sum_nats=nll,
            kl_sum_nats=kl,
        )


@contextlib.contextmanager
def restored(model: nn.Module) -> Iterator[None]:
    """Inside the context the model may be changed in place; its parameters and buffers are restored after."""
    saved = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    try:
        yield
    finally:
        model.load_state_dict(saved)


@dataclass(frozen=True)
class StudySettings:
    """Sizes and choices of :func:`run_study` (recorded with its tables)."""

    max_removed: int = 8
    orderings: tuple[str, ...] = DEFAULT_ORDERINGS
    seed: int = 0
    batch_size: int = 4
    probe_windows: int = 4
    sublayers: bool = True
    quantizers: tuple[str, ...] = ("rtn", "gptq")
    pruners: tuple[str, ...] = ("sparsegpt",)
    ledger_bits: tuple[int, ...] = (3, 4, 8)
    group: str = "channel"


@dataclass
class RemovalStudy:
    """The study's tidy tables by name and a summary (correlations, base perplexity, timings in seconds)."""

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def unit_table(importance: Importance, arch: Architecture) -> pd.DataFrame:
    """:func:`measure.importance.importance_table` with each unit's parameters, the decoder fraction they hold and
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
    table = table.assign(parameters=parameters, removed_fraction=fraction, bits_per_weight=bits)
    table["rank"] = table.groupby("unit")["influence"].rank(method="first").astype(int) - 1
    return table


def removal_levels(importance: Importance, arch: Architecture, settings: StudySettings) -> pd.DataFrame:
    """One row per (ordering, n removed blocks): the blocks, f, b(f), s(f), R_S and its SQNR."""
    rows = []
    for name in settings.orderings:
        for count in range(1, settings.max_removed + 1):
            unit, blocks = choose_units(name, importance, count, settings.seed)
            if unit != "block":
                raise PvqError(f"the study's orderings remove whole blocks; {name!r} removes {unit} sublayers")
            local = removal_set_error(importance.blocks, blocks)
            rows.append({
                "ordering": name, "removed": count, "blocks": ",".join(map(str, blocks)),
                **equal_compression(removed_fraction(arch, Removal(blocks=blocks))),
                "removal_relative_error": local, "removal_sqnr_db": sqnr_db(local),
            })  # fmt: skip
    return pd.DataFrame(rows)


def _blocks_of(text: str) -> list[int]:
    return [int(i) for i in text.split(",")] if text else []


def _scores(result: PerplexityResult) -> dict[str, float]:
    return {"perplexity": result.perplexity, "kl_to_reference_nats": result.kl_to_reference_nats}


def run_study(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    windows: TokenWindows,
    settings: StudySettings = StudySettings(),
    bounds: pd.DataFrame | None = None,
    log: Callable[[str], None] = lambda message: None,
    on_table: Callable[[str, pd.DataFrame], None] = lambda name, table: None,
) -> RemovalStudy:
    """The whole comparison on one model (module docstring); the model is left as it was.

    Tables (each passed to ``on_table`` as soon as it is final): units (importance of blocks and sublayers),
    angular (d(ℓ, n) for n = 1..max_removed), single_units (each block, attention or MLP removed alone on the
    first ``probe_windows`` windows: local error, PPL, KL, NRI), curves (decoder-level ledger / bounds points),
    block_verdicts, levels (one row per ordering and removal count: blocks, f, b(f), local error, PPL, KL and
    the verdict), end_to_end (removal levels and size-matched pruning / quantization, PPL and KL).
    """
    study = RemovalStudy()
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(step: str, **tables: pd.DataFrame) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[step] = now - clock
        clock = now
        log(f"{step}: {seconds[step]:.1f} s")
        for name, table in tables.items():
            study.tables[name] = table
            on_table(name, table)

    arch = describe(model)
    importance = measure_importance(model, batches, arch)
    units = unit_table(importance, arch)
    levels = removal_levels(importance, arch, settings)
    lap("importance", units=units, angular=angular_table(importance.states, settings.max_removed))

    probe_windows = first_windows(windows, settings.probe_windows)
    probe = ResidualStreamEvaluator(model, probe_windows, settings.batch_size, arch)
    single = _single_units(importance, arch, probe, settings.sublayers)
    lap("single_units", single_units=single)

    fractions = sorted(levels["removed_fraction"].unique())
    curves, block_curves, captured = _curves(model, arch, batches, fractions, settings, bounds, importance.capture)
    blocks = units[units["unit"] == "block"][["block", "removed_fraction", "bits_per_weight", "removal_sqnr_db"]]
    lap("ledger", curves=curves, block_verdicts=block_verdict_table(blocks, block_curves))

    evaluator = ResidualStreamEvaluator(model, windows, settings.batch_size, arch)
    study.summary["base"] = _scores(evaluator.evaluate())
    evaluated = {text: _scores(evaluator.evaluate(_blocks_of(text))) for text in levels["blocks"].unique()}
    levels = pd.concat([levels, pd.DataFrame([evaluated[text] for text in levels["blocks"]])], axis=1)
    lap("levels", levels=verdict_table(levels, curves))

    lap("baselines", end_to_end=_end_to_end(model, batches, evaluator, levels, curves, settings, captured))
    for unit, rows in single.groupby("unit"):
        study.summary[f"correlation_single_{unit}"] = propagation_correlation(
            rows["removal_relative_error"], rows["kl_to_reference_nats"]
        )
    study.summary["correlation_levels"] = propagation_correlation(
        levels["removal_relative_error"], levels["kl_to_reference_nats"]
    )
    study.summary["seconds"] = seconds
    return study


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


def _ledger_terms(fractions: Sequence[float], settings: StudySettings) -> list[str]:
    quantized = [f"{q}:{b}:{settings.group}" for q in settings.quantizers for b in settings.ledger_bits]
    pruned = [f"{p}:{f:.6f}" for p in settings.pruners for f in fractions]
    return quantized + pruned


def _curves(
    model: nn.Module,
    arch: Architecture,
    batches: Sequence[torch.Tensor],
    fractions: Sequence[float],
    settings: StudySettings,
    bounds: pd.DataFrame | None,
    captured: Capture,
) -> tuple[pd.DataFrame, pd.DataFrame, Capture]:
    """Decoder-level and block-level aggregated points of the ledger terms (and bounds), weighted by the
    output energies on the ledger's Grams (the importance pass's ``captured``, when the ledger can read it),
    and the ledger's capture (the size-matched compressions reuse it)."""
    terms = ",".join(_ledger_terms(fractions, settings))
    ledger = build_ledger(model, batches, terms, workers=None, captured=captured)
    table = ledger.table if bounds is None else pd.concat([ledger.table, bounds], ignore_index=True)
    energy = layer_output_energy(arch, ledger.capture)
    curves = aggregate_layer_errors(table, energy), aggregate_layer_errors(table, energy, by=("block",))
    return (*curves, ledger.capture)


def _end_to_end(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    evaluator: ResidualStreamEvaluator,
    levels: pd.DataFrame,
    curves: pd.DataFrame,
    settings: StudySettings,
    captured: Capture | None = None,
) -> pd.DataFrame:
    """PPL and KL of every removal level and of the size-matched pruners (sparsity s(f)) and quantizers (the
    largest ledger bits whose decoder-level bits per weight do not exceed b(f)). Compression calibrates on the
    original model's stream (``apply_spec(..., calibration="parallel")``), like the ledger, reading the ledger's
    Grams (``captured``) instead of capturing them again for every spec."""
    rows = [
        {
            "family": "removal", "method": row.ordering, "spec": f"remove:blocks={row.blocks}",
            "removed": row.removed, "removed_fraction": row.removed_fraction,
            "bits_per_weight": row.bits_per_weight, "perplexity": row.perplexity,
            "kl_to_reference_nats": row.kl_to_reference_nats,
        }
        for row in levels.itertuples()
    ]  # fmt: skip
    matched: dict[str, list[float]] = {}
    sizes = levels[["removed_fraction", "bits_per_weight"]].drop_duplicates()
    for fraction, bits in sizes.itertuples(index=False):
        for pruner in settings.pruners:
            matched.setdefault(f"{pruner}:{fraction:.6f}", []).append(fraction)
        for quantizer in settings.quantizers:
            points = matched_points(curves[curves["method"] == quantizer], bits)
            if not points.empty:
                matched.setdefault(points["term"].iloc[0], []).append(fraction)
    for spec, matched_fractions in matched.items():
        with restored(model):
            report = apply_spec(model, spec, batches, calibration="parallel", captured=captured)
            result = evaluator.evaluate(start=0)
        for fraction in matched_fractions:
            rows.append({
                "family": "compression", "method": spec.partition(":")[0], "spec": spec, "removed": None,
                "removed_fraction": fraction, "bits_per_weight": report.size["compressed_bits_per_weight"],
                **_scores(result),
            })  # fmt: skip
    return pd.DataFrame(rows)
