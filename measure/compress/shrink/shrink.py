"""Structured width pruning of any walkable causal LM: fewer MLP channels and attention heads, a smaller model.

:func:`shrink_model` removes the fraction ``mlp`` of the hidden channels of every MLP (dense, shared expert and
each routed expert alike) and the fraction ``heads`` of the attention heads of every block, the same count in
every unit so the config's single width describes the result (the uniform mode; per-block MLP fractions are saved
only where the family's config already holds per-block widths, else one PvqError names the family and the
uniform mode):

* ``head_unit="kv"`` removes whole KV groups (a KV head with the query heads it serves); ``"query"`` removes the
  same number of query heads inside every KV group, so the GQA structure survives;
* the channels / heads to remove are chosen per unit by a score of :mod:`measure.compress.shrink.select` on the
  consuming layer (down / fc2 / o) and its input Gram, captured once on the original model (each layer's problem
  on the original stream, as in the parallel calibration of :mod:`measure.compress.spec`); routed experts use the
  router-weighted Gram of their routed tokens (:mod:`measure.capture.experts`: their share of the sublayer's
  output error);
* with ``refit`` the consumer's kept columns are refit by least squares (Ŵ_K = W_K + W_C H_CK H_KK⁻¹);
* the tensors are sliced, the config updated (width fields, num_attention_heads, num_key_value_heads and an
  explicit head_dim) and the model class rebuilt from it (:mod:`measure.compress.shrink.slicing`).

:func:`plan_shrink` makes every choice and leaves the model unchanged; :func:`shrink_model` carries a plan out
(the input model is consumed: its consumers are refit in place; the result is a new model object);
:func:`zeroed_weights` gives the same plan as same-shape weights (removed rows and columns zeroed), functionally
the shrunk model, so the per-layer and per-block error views of the removal study apply to it unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from measure.capture.experts import ExpertCapture
from measure.capture.statistics import capture
from measure.compress.shrink.select import GroupChoice, check_score, choose_groups, full_refit
from measure.compress.shrink.slicing import (
    WIDTH_KEYS,
    Cut,
    apply_cuts,
    check_shapes,
    column_cuts,
    kept_rows,
    rebuild,
    row_cuts,
    updated_config,
    width_key,
)
from measure.compress.shrink.units import (
    ChannelUnit,
    HeadUnit,
    channel_units,
    check_found,
    head_counts,
    head_units,
)
from measure.models.architecture import TOWERS, Architecture, LinearRef, describe, parameter_counts
from measure.records.atomic import atomic_dir
from theory.errors import PvqError, choose

HEAD_UNITS = ("kv", "query")
RECORD_FILE = "pvq_shrink.json"
SHAPE_HINT = "shrink the other unit only or choose uniform fractions"
UNIT_COLUMNS = ["unit", "kind", "block", "expert", "width", "removed", "refit_error", "unrefit_error", "signal"]


@dataclass(frozen=True)
class ShrinkSettings:
    """Fractions removed (each in [0, 1)), the score, whether consumers are refit, and the head unit. ``mlp`` is
    one fraction for every MLP (the uniform mode) or a tuple of one fraction per block (per-block widths, which
    only a config with per-block width fields can save). ``tower`` "vision" shrinks a vision-language model's
    vision encoder instead of its language decoder; calibration data are text, so it takes the magnitude score
    without refit."""

    mlp: float | tuple[float, ...] = 0.0
    heads: float = 0.0
    score: str = "output"
    refit: bool = True
    head_unit: str = "kv"
    tower: str = "language"


@dataclass
class ShrinkPlan:
    """What a shrink removes from one model, before anything is sliced. ``units``: one row per unit (unit, kind,
    block, expert, width, removed, refit_error, unrefit_error, signal: squared output sums of the consumer on the
    calibration tokens, undamped Gram); ``kept``: unit name -> kept channel / query-head indices; the config
    changes and the updated ``config``; parameter counts before (all, and of the decoder blocks) and removed (every
    removed parameter lies in the blocks); ``cuts`` slice the state dict; ``kept_features``: (layer, axis, kept
    indices) of every producer's rows (axis 0) and consumer's columns (axis 1) in the (out, in) weight view;
    ``consumer_weights``: the refit consumers (removed columns zero), by layer name (empty without refit);
    ``family``; ``projection_norms``: the parameters of norms over a whole q or k projection in the attention
    sublayers that lose heads (Olmo-style q_norm / k_norm)."""

    settings: ShrinkSettings
    units: pd.DataFrame
    kept: dict[str, list[int]]
    config_changes: dict[str, Any]
    original_parameters: int
    decoder_parameters: int
    removed_parameters: int
    config: object = field(repr=False)
    cuts: list[Cut] = field(repr=False)
    kept_features: list[tuple[LinearRef, int, torch.Tensor]] = field(repr=False)
    consumer_weights: dict[str, torch.Tensor] = field(repr=False)
    family: str = field(repr=False)
    projection_norms: tuple[str, ...] = field(repr=False)

    @property
    def removed_fraction(self) -> float:
        """f = removed parameters / decoder parameters, the size axis of :mod:`measure.removal.equal_size`."""
        return self.removed_parameters / self.decoder_parameters

    def record(self) -> dict[str, Any]:
        """Plain dict for JSON and provenance."""
        return {"settings": asdict(self.settings), "config_changes": self.config_changes,
                "original_parameters": self.original_parameters, "decoder_parameters": self.decoder_parameters,
                "removed_parameters": self.removed_parameters, "removed_fraction": self.removed_fraction,
                "kept": self.kept}  # fmt: skip


@dataclass
class ShrinkResult(ShrinkPlan):
    """A :class:`ShrinkPlan` carried out: ``model`` is the physically smaller model."""

    model: nn.Module = field(default=None, repr=False)


def check_settings(settings: ShrinkSettings) -> None:
    """PvqError for a fraction outside [0, 1), an unknown score or head unit."""
    values = [("heads", settings.heads)]
    values += [("mlp", f) for f in settings.mlp] if isinstance(settings.mlp, tuple) else [("mlp", settings.mlp)]
    for name, value in values:
        if not isinstance(value, int | float) or not 0 <= value < 1:
            raise PvqError(f"--{name} is the fraction removed, a number in [0, 1); got {value!r}")
    check_score(settings.score)
    if settings.head_unit not in HEAD_UNITS:
        raise PvqError(f"unknown head unit {settings.head_unit!r}; choose one of {', '.join(HEAD_UNITS)}")
    choose("tower", settings.tower, TOWERS)
    if settings.tower == "vision" and (settings.score != "magnitude" or settings.refit):
        raise PvqError("the vision tower is shrunk on weight magnitudes without refit (the calibration data are "
                       "text, which never reaches it): use --score magnitude --no-refit")  # fmt: skip


def removal_count(fraction: float, total: int, what: str) -> int:
    """round(fraction · total), refused when it would remove all ``total`` (at least one must stay) or when a
    fraction above 0 removes none."""
    count = round(fraction * total)
    if fraction > 0 and count == 0:
        raise PvqError(f"removing {fraction:g} of {total} {what} removes none (round({fraction:g} · {total}) = "
                       f"0); name a fraction above {0.5 / total:.3f} or 0")  # fmt: skip
    if count >= total:
        raise PvqError(f"removing {fraction:g} of {total} {what} leaves none; at most {total - 1} can go "
                       f"(a fraction below {(total - 0.5) / total:.3f})")  # fmt: skip
    return count


@dataclass(frozen=True, eq=False)
class ShrinkCounts:
    """What ``settings`` remove from one model, known from its config and module structure alone (no capture):
    the MLP units and the channels removed from each, the attention units and the KV groups (kv) or query heads
    per KV group (query) removed from each, the config changes and the updated config, and ``projection_norms``:
    the norms over a whole q or k projection in the attention sublayers that lose heads."""

    arch: Architecture
    mlps: list[ChannelUnit]
    mlp_counts: dict[ChannelUnit, int]
    attentions: list[HeadUnit]
    head_count: int
    changes: dict[str, Any]
    config: object
    projection_norms: tuple[str, ...]


def head_unit_total(arch: Architecture, head_unit: str) -> tuple[int, str]:
    """How many of the removed head unit one attention holds, and its name: its KV groups (``kv``), or the query
    heads of one KV group (``query``), from the config."""
    heads, kv_heads, _ = head_counts(arch)
    return (kv_heads, "KV groups") if head_unit == "kv" else (heads // kv_heads, "query heads per KV group")


def shrink_counts(model: nn.Module, settings: ShrinkSettings) -> ShrinkCounts:
    """Every count and config change of ``settings`` on ``model`` (:class:`ShrinkCounts`); PvqError, before any
    capture or forward pass, for settings this model cannot take: a fraction that leaves no unit, heads of a fused
    q/k/v projection, widths the config cannot describe. The shapes are checked on meta tensors, so a model on
    the meta device (built from its config alone) is checked as well as a loaded one."""
    check_settings(settings)
    arch = describe(model, settings.tower)
    fractions = mlp_fractions(settings, len(arch.blocks))
    mlps = channel_units(arch) if any(fractions) else []
    attentions = head_units(arch) if settings.heads > 0 else []
    check_found(arch, "MLP channels", any(fractions), mlps)
    check_found(arch, "attention heads", settings.heads > 0, attentions)
    head_count = removal_count(settings.heads, *head_unit_total(arch, settings.head_unit)) if attentions else 0
    mlp_counts = {unit: removal_count(fractions[unit.block_index], unit.width, f"channels of {unit.name}")
                  for unit in mlps}  # fmt: skip
    changes = _config_changes(arch, mlps, mlp_counts, attentions, head_count, settings)
    config = updated_config(model, changes, settings.tower)
    placeholder = _cuts({u: torch.arange(u.width - mlp_counts[u]) for u in mlps},
                        {u: _first_heads(u, head_count, settings.head_unit) for u in attentions})  # fmt: skip
    meta_state = {name: tensor.to("meta") for name, tensor in model.state_dict().items()}
    check_shapes(model, config, apply_cuts(meta_state, placeholder), arch.family, SHAPE_HINT)
    norms = tuple(name for unit in attentions for name, kind in unit.extras.items() if kind != "head")
    return ShrinkCounts(arch, mlps, mlp_counts, attentions, head_count, changes, config, norms)


def plan_shrink(
    model: nn.Module, batches: Sequence[torch.Tensor], settings: ShrinkSettings,
    grams: dict[str, np.ndarray] | None = None,
) -> ShrinkPlan:  # fmt: skip
    """Choose what a shrink of ``model`` removes (module docstring), leaving the model unchanged; ``batches`` of
    token ids calibrate the scores. PvqError before any capture when the model cannot take ``settings``
    (:func:`shrink_counts`).

    ``grams``: consumer input Grams already captured on this model (:func:`consumer_grams` of an identical copy,
    or the capture of the original model), read instead of capturing ``batches`` again."""
    counts = shrink_counts(model, settings)
    arch, mlps, attentions, head_count = counts.arch, counts.mlps, counts.attentions, counts.head_count
    mlp_counts = counts.mlp_counts
    if grams is None and not (settings.score == "magnitude" and not settings.refit):
        grams = consumer_grams(model, batches, arch, mlps, attentions)
    rows, kept, mlp_keep, head_keep, refits = [], {}, {}, {}, {}
    for unit in mlps:
        groups = [[c] for c in range(unit.width)]
        choice = _choose(unit.consumer, grams, groups, mlp_counts[unit], settings, refits)
        mlp_keep[unit] = _kept(unit.width, choice.removed_groups)
        kept[unit.name] = mlp_keep[unit].tolist()
        rows.append(_row(unit.name, unit.kind, unit.block_index, unit.expert, unit.width, choice))
    for unit in attentions:
        choice, keep_heads, keep_kv = _choose_heads(unit, grams, head_count, settings, refits)
        head_keep[unit] = (keep_heads, keep_kv)
        kept[unit.name] = keep_heads.tolist()
        rows.append(_row(unit.name, "attention", unit.block_index, None, unit.heads, choice))
    return ShrinkPlan(
        settings=settings, units=pd.DataFrame(rows, columns=UNIT_COLUMNS).astype({"expert": "Int64"}), kept=kept,
        config_changes=counts.changes, original_parameters=sum(p.numel() for p in model.parameters()),
        decoder_parameters=parameter_counts(arch)["decoder"],
        removed_parameters=_accounted_parameters(mlps, mlp_counts, attentions, kept, settings.head_unit),
        config=counts.config, cuts=_cuts(mlp_keep, head_keep), kept_features=_kept_features(mlp_keep, head_keep),
        consumer_weights=refits, family=arch.family, projection_norms=counts.projection_norms,
    )  # fmt: skip


def shrink_model(
    model: nn.Module, batches: Sequence[torch.Tensor], settings: ShrinkSettings,
    grams: dict[str, np.ndarray] | None = None,
) -> ShrinkResult:  # fmt: skip
    """Shrink ``model`` as ``settings`` say (module docstring; :func:`plan_shrink`, then the refit consumers are
    written into ``model`` and its tensors sliced into a new, smaller model of the same class)."""
    plan = plan_shrink(model, batches, settings, grams)
    arch = describe(model, settings.tower)
    for ref in arch.linears:
        if ref.name in plan.consumer_weights:
            weight = ref.weight()
            ref.set_weight(plan.consumer_weights[ref.name].to(dtype=weight.dtype, device=weight.device))
    state = apply_cuts(model.state_dict(), plan.cuts)
    check_shapes(model, plan.config, state, arch.family, SHAPE_HINT)
    smaller = rebuild(model, plan.config, state)
    return ShrinkResult(**{f.name: getattr(plan, f.name) for f in fields(ShrinkPlan)}, model=smaller)


def zeroed_weights(plan: ShrinkPlan) -> dict[str, torch.Tensor]:
    """Same-shape weights of every layer a shrink touches, functionally identical to the physical shrink: the
    removed rows of every producer (gate / up / fc1 rows of removed channels, q rows of removed query heads, k and
    v rows of removed KV heads) and the removed columns of every consumer (down / fc2, o) set to 0, the consumers'
    kept columns refit when the plan refits. Removed channels and heads then contribute exactly 0 to the
    consumers' outputs (their columns are 0), as in the sliced model; the layer's (out, in) view, by layer name.
    PvqError when heads go from an attention with a norm over its whole q or k projection: that norm's scale
    depends on every row, so no same-shape weights equal the sliced model."""
    check_same_shape(plan.family, plan.projection_norms)
    weights = {}
    for ref, axis, keep in plan.kept_features:
        weight = plan.consumer_weights.get(ref.name, ref.weight()).detach().to(ref.weight().dtype).clone()
        mask = torch.ones(weight.shape[axis], dtype=torch.bool)
        mask[keep] = False
        if axis == 0:
            weight[mask.to(weight.device)] = 0
        else:
            weight[:, mask.to(weight.device)] = 0
        weights[ref.name] = weight
    return weights


def check_same_shape(family: str, projection_norms: Sequence[str]) -> None:
    """PvqError when heads go from an attention with a norm over its whole q or k projection (``projection_norms``,
    :attr:`ShrinkCounts.projection_norms`): that norm's scale depends on every row, so no same-shape weights equal
    the sliced model."""
    if projection_norms:
        raise PvqError(f"the {family} attention normalizes q or k over all heads ({projection_norms[0]}, ...), "
                       "so removed heads have no same-shape equivalent; measure its heads on the physically "
                       "shrunk model (pvq shrink, pvq eval --compress shrink:...) or remove MLP channels only")


def mlp_fractions(settings: ShrinkSettings, blocks: int) -> list[float]:
    """The fraction of MLP channels removed in each of ``blocks`` blocks: ``settings.mlp`` everywhere, or one
    fraction per block when it is a sequence (PvqError unless it has one per block)."""
    if isinstance(settings.mlp, int | float):
        return [float(settings.mlp)] * blocks
    if len(settings.mlp) != blocks:
        raise PvqError(f"per-block MLP fractions need one fraction per block: the model has {blocks} blocks, "
                       f"got {len(settings.mlp)} fractions")  # fmt: skip
    return [float(f) for f in settings.mlp]


def consumer_grams(
    model: nn.Module, batches: Sequence[torch.Tensor], arch: Any, mlps: list[ChannelUnit],
    attentions: list[HeadUnit],
) -> dict[str, np.ndarray] | None:  # fmt: skip
    """Input Grams (float64 numpy) of the consumers of ``mlps`` and ``attentions`` over ``batches``; routed experts
    get their router-weighted Gram."""
    if not (mlps or attentions):
        return None
    if not batches:
        raise PvqError("the output and wanda scores and the refit read input Grams; pass calibration batches")
    experts = ExpertCapture(route="routed")
    captured = capture(model, batches, arch=arch, block_hooks=experts.hooks)
    grams = {}
    for ref in [unit.consumer for unit in mlps] + [unit.o for unit in attentions]:
        routed = ref.expert_index is not None
        source = experts.gram_for(ref, weighted=True) if routed else captured.gram_for(ref.name)
        grams[ref.name] = source.to_numpy()
    return grams


def _choose(
    consumer: Any, grams: dict[str, np.ndarray] | None, groups: list[list[int]], count: int,
    settings: ShrinkSettings, refits: dict[str, torch.Tensor], classes: list[int] | None = None,
    quota: int | None = None,
) -> GroupChoice:  # fmt: skip
    """Choose the removed groups of one consumer and, with refit, put its refit weights into ``refits``."""
    weights = consumer.weight().double().cpu().numpy()
    gram = None if grams is None else grams[consumer.name]
    choice = choose_groups(gram, weights, groups, count, settings.score, classes, quota)
    if settings.refit and count:
        refits[consumer.name] = torch.from_numpy(full_refit(gram, weights, choice.removed_columns))
    return choice


def _kept(total: int, removed: Sequence[int]) -> torch.Tensor:
    return torch.tensor([i for i in range(total) if i not in set(removed)], dtype=torch.long)


def _choose_heads(unit: HeadUnit, grams: dict[str, np.ndarray] | None, count: int, settings: ShrinkSettings,
                  refits: dict[str, torch.Tensor]) -> tuple[GroupChoice, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Removed KV groups (kv mode) or query heads, `count` per KV group (query mode); kept heads and KV heads."""
    d, g = unit.head_dim, unit.group_size
    if settings.head_unit == "kv":
        groups = [list(range(k * g * d, (k + 1) * g * d)) for k in range(unit.kv_heads)]
        choice = _choose(unit.o, grams, groups, count, settings, refits)
        keep_kv = _kept(unit.kv_heads, choice.removed_groups)
        keep_heads = torch.tensor([k * g + i for k in keep_kv.tolist() for i in range(g)], dtype=torch.long)
        return choice, keep_heads, keep_kv
    groups = [list(range(h * d, (h + 1) * d)) for h in range(unit.heads)]
    classes = [h // g for h in range(unit.heads)]
    choice = _choose(unit.o, grams, groups, count * unit.kv_heads, settings, refits, classes, count)
    return choice, _kept(unit.heads, choice.removed_groups), torch.arange(unit.kv_heads)


def _first_heads(unit: HeadUnit, count: int, head_unit: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept (query heads, KV heads) when the first ``count`` KV groups, or query heads of every group, go."""
    g = unit.group_size
    if head_unit == "kv":
        return torch.arange(count * g, unit.heads), torch.arange(count, unit.kv_heads)
    kept = torch.tensor([h for h in range(unit.heads) if h % g >= count], dtype=torch.long)
    return kept, torch.arange(unit.kv_heads)


def _cuts(
    mlp_keep: dict[ChannelUnit, torch.Tensor], head_keep: dict[HeadUnit, Sequence[torch.Tensor]]
) -> list[Cut]:
    """Every cut of the kept channels of ``mlp_keep`` and kept (query heads, KV heads) of ``head_keep``."""
    cuts = []
    for unit, keep in mlp_keep.items():
        cuts += [c for ref in unit.producers for c in row_cuts(ref, keep, unit.width)]
        cuts += column_cuts(unit.consumer, keep)
    for unit, (keep_heads, keep_kv) in head_keep.items():
        cuts += _head_cuts(unit, keep_heads, keep_kv)
    return cuts


def _kept_features(
    mlp_keep: dict[ChannelUnit, torch.Tensor], head_keep: dict[HeadUnit, Sequence[torch.Tensor]]
) -> list[tuple[LinearRef, int, torch.Tensor]]:
    """(layer, axis, kept indices) in the (out, in) weight view: producer rows (0) and consumer columns (1)."""
    features = []
    for unit, keep in mlp_keep.items():
        features += [(ref, 0, keep if ref.out_features == unit.width else kept_rows(ref, keep, unit.width))
                     for ref in unit.producers]  # a stacked expert's gate and up are separate views
        features.append((unit.consumer, 1, keep))
    for unit, (keep_heads, keep_kv) in head_keep.items():
        q_rows, kv_rows = _dims(keep_heads, unit.head_dim), _dims(keep_kv, unit.head_dim)
        features += [(unit.q, 0, q_rows), (unit.k, 0, kv_rows), (unit.v, 0, kv_rows), (unit.o, 1, q_rows)]
    return features


def _dims(heads: torch.Tensor, d: int) -> torch.Tensor:
    """The feature indices h·d .. (h + 1)·d − 1 of heads ``heads``."""
    return (heads[:, None] * d + torch.arange(d)[None, :]).flatten()


def _head_cuts(unit: HeadUnit, keep_heads: torch.Tensor, keep_kv: torch.Tensor) -> list[Cut]:
    q_rows, kv_rows = _dims(keep_heads, unit.head_dim), _dims(keep_kv, unit.head_dim)
    cuts = row_cuts(unit.q, q_rows, unit.heads * unit.head_dim) + column_cuts(unit.o, q_rows)
    cuts += [c for ref in (unit.k, unit.v) for c in row_cuts(ref, kv_rows, unit.kv_heads * unit.head_dim)]
    keep_of = {"head": keep_heads, "q": q_rows, "k": kv_rows}
    return cuts + [Cut(name, 0, keep_of[kind]) for name, kind in unit.extras.items()]


def _row(name: str, kind: str, block: int, expert: int | None, width: int, choice: GroupChoice) -> dict[str, Any]:
    return {"unit": name, "kind": kind, "block": block, "expert": expert, "width": width,
            "removed": len(choice.removed_groups), "refit_error": choice.refit_error,
            "unrefit_error": choice.unrefit_error, "signal": choice.signal}  # fmt: skip


def _config_changes(
    arch: Any, mlps: list[ChannelUnit], mlp_counts: dict[ChannelUnit, int], attentions: list[HeadUnit],
    head_count: int, settings: ShrinkSettings,
) -> dict[str, int]:  # fmt: skip
    """New config values: the width of each kind of MLP unit (one number, or one per block where the config
    already holds per-block widths), head counts."""
    changes: dict[str, Any] = {}
    for kind in sorted({unit.kind for unit in mlps}):
        of_kind = [unit for unit in mlps if unit.kind == kind]
        key, widths = _mlp_widths(arch, kind, of_kind, mlp_counts)
        changes[key] = widths
    if attentions and head_count:
        heads, kv_heads, head_dim = attentions[0].heads, attentions[0].kv_heads, attentions[0].head_dim
        kv_after = kv_heads - head_count if settings.head_unit == "kv" else kv_heads
        per_group = heads // kv_heads - (head_count if settings.head_unit == "query" else 0)
        changes |= {"num_attention_heads": kv_after * per_group, "head_dim": head_dim}
        if getattr(arch.config, "num_key_value_heads", None) is not None:
            changes["num_key_value_heads"] = kv_after
    return changes


def _mlp_widths(arch: Any, kind: str, units: list[ChannelUnit], counts: dict[ChannelUnit, int]
                ) -> tuple[str, int | list[int]]:  # fmt: skip
    """The config field holding the width of ``kind`` units and its new value: one width when every unit keeps the
    same, else the per-block widths where the config's field already is a per-block list; otherwise one PvqError
    naming the family and the uniform mode."""
    per_block = [key for key in WIDTH_KEYS[kind] if isinstance(getattr(arch.config, key, None), list | tuple)]
    new = [unit.width - counts[unit] for unit in units]
    if kind == "mlp" and per_block and len(getattr(arch.config, per_block[0])) == len(units):
        return per_block[0], new
    old = {unit.width for unit in units}
    key = width_key(arch.config, kind, min(old), arch.family)
    if len(old) > 1 or len(set(new)) > 1:
        raise PvqError(f"the {arch.family} config holds one {kind} width ({key}), but these fractions leave "
                       f"per-layer widths {sorted(set(new))}, which the {arch.family} config cannot describe; use "
                       "the uniform mode: one fraction for every layer (e.g. --mlp 0.25)")  # fmt: skip
    return key, new[0]


def _accounted_parameters(
    mlps: list[ChannelUnit], mlp_counts: dict[ChannelUnit, int], attentions: list[HeadUnit],
    kept: dict[str, list[int]], head_unit: str,
) -> int:  # fmt: skip
    """Removed parameters from the unit shapes: per channel, its producer rows (weights and biases) and consumer
    column; per query head, d rows of q and d columns of o; per KV head, d rows of k and v; per-head extras."""
    removed = 0
    for unit in mlps:
        rows = sum((2 if ref.role.endswith("gate_up") and not ref.stacked else 1)
                   * (ref.in_features + (ref.bias() is not None)) for ref in unit.producers)  # fmt: skip
        removed += mlp_counts[unit] * (rows + unit.consumer.out_features)
    for unit in attentions:
        gone_heads = unit.heads - len(kept[unit.name])
        gone_kv = gone_heads // unit.group_size if head_unit == "kv" else 0
        d = unit.head_dim
        removed += gone_heads * d * (unit.q.in_features + (unit.q.bias() is not None) + unit.o.out_features)
        removed += gone_kv * d * sum(ref.in_features + (ref.bias() is not None) for ref in (unit.k, unit.v))
        sizes = {"head": gone_heads, "q": gone_heads * d, "k": gone_kv * d}
        removed += sum(sizes[kind] for kind in unit.extras.values())
    return removed


def save_shrunk(result: ShrinkResult, directory: str | Path, tokenizer: object | None = None) -> Path:
    """``save_pretrained`` of the shrunk model into ``directory`` atomically, with ``pvq_shrink.json``."""
    target = Path(directory)
    with atomic_dir(target) as tmp:
        result.model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / RECORD_FILE).write_text(json.dumps(result.record(), indent=2))
    return target
