"""Remove decoder blocks, token- or channel-mixer sublayers, or routed experts from any walkable model.

Everything goes through the architecture walker (:func:`measure.models.architecture.describe`), so one code path
serves sequential, parallel, sandwich-norm and mixture-of-experts families. The result runs, its config
agrees with its modules, and ``save_pretrained`` + plain ``from_pretrained`` gives identical logits:

* **Blocks** of any kind (attention, linear attention, state space, short convolution; of the language decoder
  or, with ``tower="vision"``, of a vision encoder) leave the blocks' nn.ModuleList. The tower's config is fixed
  up: ``num_hidden_layers``; every list with one entry per block (``layer_types``, ``layers_block_type``) keeps
  the entries of the kept blocks; block periods / offsets (:data:`LAYER_PERIODS`, Jamba) become the pair that
  selects the same kept blocks, or the removal is refused naming the family and block kinds; a VLM's
  ``vision_feature_layer`` follows the kept vision blocks;
  lists of block indices (:data:`LAYER_INDEX_LISTS`, e.g. Qwen-MoE's ``mlp_only_layers``) are renumbered; every
  module attribute ``layer_idx`` inside the kept blocks is renumbered 0..L'−1, so the KV cache, which
  ``DynamicCache(config=…)`` sizes from the config, is indexed consistently. Token-id lists and
  ``architectures`` are never per-block lists, whatever their length.
* **Sublayers** (the token mixers or the channel mixers of one block: "attention" / "mlp") become the identity on
  the residual stream: every parameter of
  the sublayer is set to zero, so its residual update is exactly zero (its last operation is a linear map or a
  sum of expert outputs, and a sandwich output norm, an RMSNorm, maps 0 to 0). The checkpoint keeps
  the zero tensors so that plain ``from_pretrained`` rebuilds the same function; a runtime that skips the
  sublayer needs none of them, so the accounting (:func:`removed_parameters`) counts them as removed. In a
  post-norm block (OPT-350m) the residual norm still applies.
* **Experts** of every mixture-of-experts block: the ``count`` experts with the smallest router-weighted score
  (:func:`measure.compress.importance.record_router_scores`) leave the expert list or the fused 3-D tensors, the
  router
  loses their rows, and the config's expert count drops by ``count`` in every MoE block (configs hold one
  expert count, so each MoE block drops the same number).

A vision tower's patch embedding and projector change the shapes the rest of the model reads: :func:`remove_part`
refuses them with the reason. After every change :func:`check_rebuildable` builds the model class from the new
config on the meta device and compares parameter names and shapes, so a config that would not reload raises here,
not at load time.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from measure.compress.importance import SUBLAYER_KINDS, choose_units, get_ordering, measure_importance
from measure.compress.term_kind import TermKind
from measure.models.architecture import (
    Architecture,
    Block,
    Sublayer,
    check_block_indices,
    describe,
    parameter_counts,
)
from measure.records.atomic import atomic_dir
from theory.accounting import removal_bits_per_weight
from theory.errors import PvqError, choose

LAYER_INDEX_LISTS = ("mlp_only_layers", "attn_layer_indices")
"""Config attributes that list block indices (not one entry per block); renumbered when blocks go."""
LAYER_PERIODS = (("attn_layer_period", "attn_layer_offset"), ("expert_layer_period", "expert_layer_offset"))
"""(period, offset) config attributes that select blocks i with i mod period = offset (Jamba's attention and
mixture-of-experts blocks); rewritten to the pair that selects the same kept blocks, or the removal is refused."""
EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")
"""Config and module attributes that hold the number of routed experts per MoE block."""
FEATURE_LAYER_KEYS = ("vision_feature_layer",)
"""Vision-language config attributes that index the vision tower's hidden states (renumbered with its blocks)."""
RECORD_FILE = "pvq_removal.json"
SHAPE_CHANGING_PARTS = {
    "patch_embedding": "it turns pixels into the {width}-wide tokens every vision block reads; without it the "
    "tower has no input",
    "projector": "it maps {width}-wide vision features to the language model's embedding width; without it the "
    "image features do not fit the language model",
}
"""Vision-tower parts that cannot be removed, and why: removing them changes the shapes the rest reads."""


@dataclass
class Removal:
    """What was removed, numbered as in the model it was removed from (recorded beside a saved checkpoint).

    ``expert_parameters`` counts the dropped experts' weights and router rows when they are dropped (fused expert
    tensors are sliced in place, so they cannot be counted on the model afterwards).
    """

    blocks: list[int] = field(default_factory=list)
    attention: list[int] = field(default_factory=list)
    mlp: list[int] = field(default_factory=list)
    experts: dict[int, list[int]] = field(default_factory=dict)
    expert_parameters: int = 0
    original_blocks: int = 0

    def as_dict(self) -> dict[str, object]:
        """Plain dict for JSON and provenance."""
        return asdict(self)


def remove_blocks(model: nn.Module, indices: Iterable[int], tower: str = "language") -> Removal:
    """Delete the blocks ``indices`` (0-based, current numbering) of ``tower`` (the language decoder or the
    vision encoder) and fix up config and ``layer_idx``."""
    arch = describe(model, tower)
    count = len(arch.blocks)
    removed = check_block_indices(indices, count)
    if len(removed) >= count:
        raise PvqError(
            f"cannot remove {len(removed)} blocks from a model of {count}: at least one block must stay"
        )
    kept = [index for index in range(count) if index not in removed]
    updates = _renumbered_config(arch, kept, removed)
    block_list = model.get_submodule(arch.blocks_path)
    parent_path, _, attribute = arch.blocks_path.rpartition(".")
    setattr(model.get_submodule(parent_path), attribute, nn.ModuleList(block_list[i] for i in kept))
    for key, value in updates.items():
        setattr(arch.config, key, value)
    for key, value in _feature_layers(model.config, kept, count, arch.tower).items():
        setattr(model.config, key, value)
    for new_index, old_index in enumerate(kept):
        for module in block_list[old_index].modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    check_rebuildable(model)
    return Removal(blocks=removed, original_blocks=count)


def _renumbered_config(arch: Architecture, kept: list[int], removed: list[int]) -> dict[str, object]:
    """The (language) config entries that change when only the blocks ``kept`` stay: num_hidden_layers,
    per-block lists (``layer_types``, ``layers_block_type``), block-index lists and block periods / offsets.

    PvqError, naming the family and the removed blocks' kinds, when a period / offset pair cannot select the
    kept blocks; nothing is changed then.
    """
    config, count = arch.config, len(arch.blocks)
    position = {old: new for new, old in enumerate(kept)}
    updates: dict[str, object] = {"num_hidden_layers": len(kept)}
    for key, value in list(vars(config).items()):
        if key.startswith("_") or key == "architectures" or key.endswith(("token_id", "token_ids")):
            continue
        if isinstance(value, list | tuple) and len(value) == count:
            updates[key] = type(value)(value[i] for i in kept)
        elif key in LAYER_INDEX_LISTS and isinstance(value, list | tuple):
            updates[key] = type(value)(position[i] for i in value if i in position)
    for period_key, offset_key in LAYER_PERIODS:
        period, offset = getattr(config, period_key, None), getattr(config, offset_key, None)
        if isinstance(period, int) and isinstance(offset, int):
            selected = [index % period == offset for index in kept]
            found = _period_selecting(selected)
            if found is None:
                kinds = ", ".join(f"{i} ({'+'.join(arch.blocks[i].kinds)})" for i in removed)
                raise PvqError(
                    f"cannot remove block(s) {kinds} of {arch.family}: its config selects blocks by "
                    f"{period_key} = {period}, {offset_key} = {offset}, and no period and offset select the kept "
                    f"blocks {[i for i, s in zip(kept, selected, strict=True) if s]}; nothing was removed"
                )
            updates[period_key], updates[offset_key] = found
    return updates


def _feature_layers(config: object, kept: list[int], count: int, tower: str) -> dict[str, object]:
    """Vision-language configs that pick the image features from a hidden state of the vision tower
    (:data:`FEATURE_LAYER_KEYS`; hidden state h is the output of block h − 1, negative h counts from the end)
    point, after vision blocks are removed, at the same kept block's output: h' = #{kept blocks < h}."""
    if tower != "vision":
        return {}
    updates: dict[str, object] = {}
    for key in FEATURE_LAYER_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int):
            updates[key] = _feature_layer(value, kept, count)
        elif isinstance(value, list | tuple):
            updates[key] = type(value)(_feature_layer(v, kept, count) for v in value)
    return updates


def _feature_layer(value: int, kept: list[int], count: int) -> int:
    old = value if value >= 0 else count + 1 + value
    new = sum(1 for index in kept if index < old)
    return new if value >= 0 else new - (len(kept) + 1)


def _period_selecting(selected: list[bool]) -> tuple[int, int] | None:
    """The smallest (period, offset) with (i mod period = offset) = selected[i] for every i, or None."""
    for period in range(1, len(selected) + 2):
        for offset in range(period):
            if all((index % period == offset) == chosen for index, chosen in enumerate(selected)):
                return period, offset
    return None


def sublayers_of(block: Block, kind: str) -> tuple[Sublayer, ...]:
    """The token mixers (``kind`` "attention") or channel mixers ("mlp") of ``block``: the unit that goes when
    the block's ``kind`` sublayer is removed."""
    choose("sublayer kind", kind, SUBLAYER_KINDS)
    return block.slot(kind)


def sublayer_parameters(sublayers: Sequence[Sublayer]) -> list[nn.Parameter]:
    """Every parameter of the sublayers (the modules', or the loose linears' of a virtual MLP), once each."""
    modules = [
        m for s in sublayers for m in ([s.module] if s.module is not None else [r.module for r in s.linears])
    ]
    unique = {id(p): p for module in modules for p in module.parameters()}
    return list(unique.values())


def _removable_parameters(arch: Architecture, kind: str, index: int) -> list[nn.Parameter]:
    """The parameters that zeroing removes the ``kind`` sublayer of block ``index`` with; PvqError, naming the
    family and block kinds, when the block has no such sublayer."""
    block = arch.blocks[index]
    sublayers = sublayers_of(block, kind)
    if not sublayers:
        raise PvqError(
            f"cannot remove the {kind} sublayer of block {index} of {arch.family}: the block "
            f"({'+'.join(block.kinds)}) has none; nothing was removed"
        )
    return sublayer_parameters(sublayers)


def remove_sublayers(model: nn.Module, kind: str, indices: Iterable[int], tower: str = "language") -> Removal:
    """Make the ``kind`` sublayer of each block in ``indices`` (of ``tower``) the identity on the residual stream
    (zeros)."""
    arch = describe(model, tower)
    chosen = check_block_indices(indices, len(arch.blocks), what=f"{kind} block")
    parameters = [_removable_parameters(arch, kind, index) for index in chosen]
    with torch.no_grad():
        for parameter in (p for group in parameters for p in group):
            parameter.zero_()
    return Removal(**{kind: chosen}, original_blocks=len(arch.blocks))


@contextmanager
def sublayer_removed(arch: Architecture, kind: str, index: int) -> Iterator[None]:
    """Inside the context the sublayer is the identity (zero parameters); its weights are restored after."""
    (checked,) = check_block_indices([index], len(arch.blocks), what=f"{kind} block")
    parameters = _removable_parameters(arch, kind, checked)
    saved = [p.detach().clone() for p in parameters]
    try:
        with torch.no_grad():
            for parameter in parameters:
                parameter.zero_()
        yield
    finally:
        with torch.no_grad():
            for parameter, value in zip(parameters, saved, strict=True):
                parameter.copy_(value)


def drop_experts(model: nn.Module, scores: Mapping[int, np.ndarray], count: int) -> Removal:
    """Remove the ``count`` lowest-scoring routed experts of every MoE block (scores: block → (E,) array)."""
    arch = describe(model)
    moe_blocks = [block for block in arch.blocks if block.mlp is not None and block.mlp.experts is not None]
    if not moe_blocks:
        raise PvqError(f"{arch.model_class} has no mixture-of-experts blocks; there are no experts to drop")
    total = moe_blocks[0].mlp.experts.count
    top_k = int(getattr(arch.config, "num_experts_per_tok", 1))
    if not (isinstance(count, int) and 1 <= count <= total - top_k):
        raise PvqError(
            f"cannot drop {count!r} of {total} experts per block: each token uses {top_k} experts, "
            f"so drop 1..{total - top_k}"
        )
    for block in moe_blocks:
        if block.index not in scores or len(scores[block.index]) != total:
            raise PvqError(f"no router scores for the {total} experts of block {block.index}; measure them first")
    dropped = {
        block.index: sorted(int(e) for e in np.argsort(scores[block.index], kind="stable")[:count])
        for block in moe_blocks
    }
    parameters = sum(_expert_parameters(block, dropped[block.index]) for block in moe_blocks)
    for block in moe_blocks:
        _keep_experts(block, [e for e in range(total) if e not in dropped[block.index]], total)
    for key in EXPERT_COUNT_KEYS:
        if getattr(arch.config, key, None) == total:
            setattr(arch.config, key, total - count)
    check_rebuildable(model)
    return Removal(experts=dropped, expert_parameters=parameters, original_blocks=len(arch.blocks))


def _expert_parameters(block: Block, experts: list[int]) -> int:
    """Weights and biases of ``experts`` in ``block`` plus their router rows."""
    mlp = block.mlp
    weights = sum(ref.parameter_count for ref in mlp.linears if ref.expert_index in experts)
    return weights + len(experts) * mlp.router.parameter_count // mlp.experts.count


def _keep_experts(block: Block, keep: list[int], total: int) -> None:
    """Slice the router rows and the experts (ModuleList entries or leading dimension of fused tensors)."""
    experts, router = block.mlp.experts, block.mlp.router
    index = torch.tensor(keep)
    owners = [router.module] + ([] if isinstance(experts.module, nn.ModuleList) else [experts.module])
    for owner in owners:
        for name, parameter in list(owner.named_parameters(recurse=False)):
            if parameter.shape and parameter.shape[0] == total:
                setattr(owner, name, nn.Parameter(parameter.detach()[index].clone(), parameter.requires_grad))
    if isinstance(experts.module, nn.ModuleList):
        attribute = experts.name.rpartition(".")[2]
        setattr(block.mlp.module, attribute, nn.ModuleList(experts.module[i] for i in keep))
    for module in block.mlp.module.modules():
        for key in (*EXPERT_COUNT_KEYS, "num_experts"):
            if getattr(module, key, None) == total:
                setattr(module, key, len(keep))


def remove_part(model: nn.Module, part: str) -> Removal:
    """Refuse to remove a shape-changing part of the vision tower (:data:`SHAPE_CHANGING_PARTS`): always one
    PvqError that names the model, the part and why; the model is left as it was."""
    choose("vision-tower part", part, SHAPE_CHANGING_PARTS)
    arch = describe(model, "vision")
    module = arch.embeddings if part == "patch_embedding" else arch.projector
    why = SHAPE_CHANGING_PARTS[part].format(width=arch.config.hidden_size)
    raise PvqError(
        f"cannot remove the {part} ({type(module).__name__}) of the {arch.family} tower of {arch.model_class}: "
        f"{why}; remove vision blocks (--tower vision --indices ...) instead"
    )


def check_rebuildable(model: nn.Module) -> None:
    """Raise unless the model class built from the model's config has the same parameter names and shapes."""
    with torch.device("meta"):
        fresh = type(model)(copy.deepcopy(model.config))
    expected = {name: tuple(t.shape) for name, t in fresh.state_dict().items()}
    actual = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if expected != actual:
        differing = sorted(set(expected.items()) ^ set(actual.items()))[:4]
        raise PvqError(
            f"after removal the config of {type(model).__name__} no longer describes its modules (first "
            f"differences: {differing}); this family needs a config fix-up in measure/compress/remove.py"
        )


def removed_parameters(arch: Architecture, removal: Removal) -> int:
    """Parameters a runtime no longer needs: whole blocks, removed sublayers with the norms only they use (both
    counted on ``arch``, described before removal), dropped experts (counted when dropped)."""
    total = 0
    for index in removal.blocks:
        total += sum(p.numel() for p in arch.blocks[index].module.parameters())
    for kind in SUBLAYER_KINDS:
        for index in getattr(removal, kind):
            total += sublayer_parameter_count(arch.blocks[index], kind)
    return total + removal.expert_parameters


def removed_fraction(arch: Architecture, removal: Removal) -> float:
    """f = removed parameters / decoder parameters (all blocks), both counted on ``arch`` before removal."""
    return removed_parameters(arch, removal) / parameter_counts(arch)["decoder"]


def sublayer_parameter_count(block: Block, kind: str) -> int:
    """Parameters of the token mixers (``kind`` "attention") or channel mixers ("mlp") plus their input /
    output norms when the other slot does not share them."""
    sublayers = sublayers_of(block, kind)
    others = sublayers_of(block, "mlp" if kind == "attention" else "attention")
    shared = {id(norm) for other in others for norm in (other.input_norm, other.output_norm) if norm is not None}
    norms = {
        id(n): n for s in sublayers for n in (s.input_norm, s.output_norm) if n is not None and id(n) not in shared
    }
    norm_count = sum(p.numel() for norm in norms.values() for p in norm.parameters())
    return sum(p.numel() for p in sublayer_parameters(sublayers)) + norm_count


def save_removed(
    model: nn.Module, directory: str | Path, removal: Removal, tokenizer: object | None = None
) -> Path:
    """``save_pretrained`` into ``directory`` atomically, with the removal record ``pvq_removal.json``."""
    target = Path(directory)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / RECORD_FILE).write_text(json.dumps(removal.as_dict(), indent=2))
    return target


def remove_units(model: nn.Module, unit: str, indices: Iterable[int], tower: str = "language") -> Removal:
    """Remove whole blocks (``unit`` = "block") or the ``unit`` sublayer ("attention" / "mlp") of each block."""
    if unit == "block":
        return remove_blocks(model, indices, tower)
    return remove_sublayers(model, unit, indices, tower)


EXPLICIT_UNITS = {"blocks": "block", "attn": "attention", "mlp": "mlp"}
"""``remove:<key>=i,j,...`` spec tokens -> the unit they remove."""


def parse_removal_term(tokens: tuple[str, ...]) -> dict[str, Any]:
    """Parameters of a ``remove`` spec term (PvqError names the bad token).

    ``remove:blocks=3,7,12`` / ``remove:attn=2,5`` / ``remove:mlp=1``: those blocks or sublayers;
    ``remove:<metric>:<n>[:seed=S]``: the n units rule <metric> of :data:`measure.compress.importance.ORDERINGS`
    picks on
    the calibration data (``remove:bi:4`` is ShortGPT); ``remove:experts:<n>``: the n experts of lowest router
    score in every MoE block.
    """
    usage = "write remove:blocks=3,7 / remove:attn=2,5 / remove:mlp=1 / remove:<metric>:<n> / remove:experts:<n>"
    if not tokens:
        raise PvqError(f"a remove term needs what to remove; {usage}")
    key, equals, value = tokens[0].partition("=")
    if equals:
        if key not in EXPLICIT_UNITS or len(tokens) > 1:
            raise PvqError(f"unknown remove token {':'.join(tokens)!r}; {usage}")
        return {"unit": EXPLICIT_UNITS[key], "indices": _index_list(value, key)}
    if key != "experts":
        get_ordering(key)
    if len(tokens) < 2 or not tokens[1].isdigit():
        raise PvqError(f"remove:{key} needs a count, e.g. remove:{key}:4; {usage}")
    params: dict[str, Any] = {"metric": key, "count": int(tokens[1]), "seed": 0}
    for token in tokens[2:]:
        name, equals, value = token.partition("=")
        if name != "seed" or not equals or not value.isdigit():
            raise PvqError(f"unknown remove token {token!r}; the only option is seed=<integer> (random order)")
        params["seed"] = int(value)
    return params


def _index_list(text: str, key: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise PvqError(f"remove:{key}= takes comma-separated block indices such as 3,7,12, got {text!r}") from None


def apply_removal_term(
    model: nn.Module, params: Mapping[str, Any], batches: Sequence[torch.Tensor], device: str = "cpu"
) -> dict[str, Any]:
    """Apply a parsed ``remove`` term in place; report what went and the equal-compression bits per weight."""
    arch = describe(model)
    if "indices" in params:
        removal = remove_units(model, params["unit"], params["indices"])
    else:
        if not batches:
            raise PvqError(f"remove:{params['metric']} ranks units on calibration data; pass calibration batches")
        importance = measure_importance(model, batches, arch)
        if params["metric"] == "experts":
            removal = drop_experts(model, importance.expert_scores, params["count"])
        else:
            unit, indices = choose_units(params["metric"], importance, params["count"], params["seed"])
            removal = remove_units(model, unit, indices)
    fraction = removed_fraction(arch, removal)
    return {
        "removal": removal.as_dict(),
        "removed_parameters": removed_parameters(arch, removal),
        "removed_fraction": fraction,
        "equal_compression_bits_per_weight": removal_bits_per_weight(fraction),
    }


def check_removal_term(model: nn.Module, params: Mapping[str, Any]) -> None:
    """PvqError unless ``model`` has the blocks a parsed ``remove`` term names: indices in range (one block at
    least left), or a count of blocks below the block count (of sublayers up to it); expert counts are checked
    against the router when the term is applied."""
    blocks = len(describe(model).blocks)
    if "indices" in params:
        chosen = check_block_indices(params["indices"], blocks, what=f"{params['unit']} block")
        if params["unit"] == "block" and len(chosen) >= blocks:
            raise PvqError(f"cannot remove {len(chosen)} blocks from a model of {blocks}: at least one must stay")
    elif params["metric"] != "experts":
        most = blocks - 1 if get_ordering(params["metric"]).unit == "block" else blocks
        if not 1 <= params["count"] <= most:
            raise PvqError(f"remove:{params['metric']} removes 1..{most} units of a model of {blocks} blocks, "
                           f"got {params['count']}")  # fmt: skip


REMOVE_TERM = TermKind(
    name="remove",
    summary="remove blocks, attention / MLP sublayers or experts (ShortGPT, Gromov et al., LLM-Drop, router)",
    parse=parse_removal_term,
    apply=apply_removal_term,
    check=check_removal_term,
)
"""The ``remove`` model-level spec term (registered in :data:`measure.compress.spec.TERM_KINDS`)."""
