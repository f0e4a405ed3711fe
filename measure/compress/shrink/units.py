"""The width units of a walked model: MLP hidden channels and attention heads, with the tensors each one couples.

Everything comes from :func:`measure.models.architecture.describe` and the (language) config; nothing is per
family.

* **MLP channel** j of a dense MLP, a shared expert or one routed expert couples row j of every input layer
  (gate and up, fc1, the gate or up half of a fused gate_up) with column j of the output layer (down, fc2).
* **Attention head** h couples rows h·d..(h+1)·d of q (d = head_dim) with the same columns of o; KV head k couples
  rows k·d..(k+1)·d of k and v, and serves query heads k·g..(k+1)·g − 1 (g = heads / kv_heads, GQA). Parameters
  of the attention module that are not linear layers are cut with what their leading dimension counts: one
  entry per query head (attention sinks), or the rows of q / k (an Olmo-style q_norm / k_norm over the whole
  projection); a q / k norm of the config's head dimension (Gemma's q_norm and k_norm, applied to each head) is
  kept whole, even where one KV head makes the k projection exactly that wide.

A coupling the walker cannot resolve (a fused q/k/v projection, widths that disagree with the config) raises one
PvqError naming the family and the unit.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from measure.models.architecture import Architecture, Block, LinearRef, Sublayer
from theory.errors import PvqError

INPUT_ROLES = frozenset({"gate", "up", "fc1", "gate_up"})
OUTPUT_ROLES = frozenset({"down", "fc2"})


@dataclass(frozen=True, eq=False)
class ChannelUnit:
    """The hidden channels of one MLP: ``producers`` (rows), ``consumer`` (columns), ``width`` channels.

    ``kind`` is "mlp" (dense), "shared" (a shared expert) or "expert" (one routed expert, ``expert`` its index).
    """

    name: str
    kind: str
    block_index: int
    expert: int | None
    producers: tuple[LinearRef, ...]
    consumer: LinearRef
    width: int


@dataclass(frozen=True, eq=False)
class HeadUnit:
    """The heads of one attention sublayer: q, k, v (rows), o (columns), and its other parameters by what they
    count (``extras``: parameter name -> "head", "q" or "k")."""

    name: str
    block_index: int
    module: nn.Module
    q: LinearRef
    k: LinearRef
    v: LinearRef
    o: LinearRef
    heads: int
    kv_heads: int
    head_dim: int
    extras: dict[str, str]

    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return self.heads // self.kv_heads


def channel_units(arch: Architecture) -> list[ChannelUnit]:
    """Every MLP of every block (dense, shared expert, each routed expert), in block order."""
    units = []
    for block in arch.blocks:
        parts: dict[tuple[str, int | None], list[LinearRef]] = {}
        for ref in (ref for sublayer in block.channel_mixers for ref in sublayer.linears):
            prefix, _, role = ref.role.rpartition(".")
            if role in INPUT_ROLES | OUTPUT_ROLES:
                kind = {"": "mlp", "shared": "shared", "expert": "expert"}.get(prefix)
                if kind is None:
                    raise PvqError(f"{arch.family}: MLP layer {ref.name} has role {ref.role!r}, not a known unit")
                parts.setdefault((kind, ref.expert_index), []).append(ref)
        units += [_channel_unit(arch, block, kind, expert, refs) for (kind, expert), refs in parts.items()]
    return units


def _channel_unit(
    arch: Architecture, block: Block, kind: str, expert: int | None, refs: list[LinearRef]
) -> ChannelUnit:
    consumers = [ref for ref in refs if ref.role.rpartition(".")[2] in OUTPUT_ROLES]
    producers = tuple(ref for ref in refs if ref not in consumers)
    where = f"{arch.family} block {block.index} {kind}" + ("" if expert is None else f" expert {expert}")
    if len(consumers) != 1 or not producers:
        raise PvqError(f"cannot resolve the MLP channels of {where}: expected input layers and one output layer, "
                       f"found {[ref.name for ref in refs]}")  # fmt: skip
    width = consumers[0].in_features
    for ref in producers:
        expected = 2 * width if ref.role.endswith("gate_up") and not ref.stacked else width
        if ref.out_features != expected:
            raise PvqError(f"cannot resolve the MLP channels of {where}: {ref.name} has {ref.out_features} "
                           f"outputs, its output layer {consumers[0].name} reads {width}")  # fmt: skip
    name = consumers[0].name.rpartition(".")[0]
    return ChannelUnit(name, kind, block.index, expert, producers, consumers[0], width)


def head_units(arch: Architecture) -> list[HeadUnit]:
    """The attention heads of every attention mixer (PvqError when its q/k/v/o coupling cannot be resolved).

    Only softmax attention has heads to remove here; the heads of state-space and linear-attention mixers and
    the channels of short convolutions keep their width (they stay, whole, in their blocks).
    """
    return [
        _head_unit(arch, block, mixer)
        for block in arch.blocks
        for mixer in block.mixers
        if mixer.operator == "attention"
    ]


def check_found(arch: Architecture, what: str, asked: bool, units: list) -> None:
    """PvqError naming the family and its block kinds when ``what`` is asked for and the model has none."""
    if asked and not units:
        kinds = sorted({"+".join(block.kinds) for block in arch.blocks})
        raise PvqError(
            f"{arch.family} has no {what} to remove: its blocks are {', '.join(kinds)}; the heads of state-space "
            "and linear-attention mixers and the channels of short convolutions are not width-pruned"
        )


def head_counts(arch: Architecture) -> tuple[int, int, int]:
    """(num_attention_heads, num_key_value_heads, head_dim) from the config (kv = heads, d = hidden / heads
    when the config does not set them)."""
    config = arch.config
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads, kv_heads, int(head_dim)


def _head_unit(arch: Architecture, block: Block, attention: Sublayer) -> HeadUnit:
    roles = {ref.role: ref for ref in attention.linears}
    where = f"{arch.family} block {block.index} attention"
    if "qkv" in roles:
        raise PvqError(
            f"cannot remove heads of {where}: its q/k/v projection is fused ({roles['qkv'].name}) and the "
            f"{arch.family} config derives head_dim from hidden_size / num_attention_heads, so fewer heads "
            "cannot be saved as a loadable checkpoint; remove MLP channels only (heads 0)"
        )
    if not {"q", "k", "v", "o"} <= set(roles):
        raise PvqError(f"cannot resolve the heads of {where}: found roles {sorted(roles)}, need q, k, v and o")
    heads, kv_heads, head_dim = head_counts(arch)
    q, k, v, o = roles["q"], roles["k"], roles["v"], roles["o"]
    if q.out_features == 2 * heads * head_dim == 2 * o.in_features:
        raise PvqError(
            f"cannot remove heads of {where}: its q projection gives every head a query and an output gate "
            f"({q.out_features} = 2 × {heads} heads × {head_dim}), which head slicing does not follow; remove MLP "
            "channels only (heads 0)"
        )
    shapes_agree = (
        q.out_features == o.in_features == heads * head_dim
        and k.out_features == v.out_features == kv_heads * head_dim
        and heads % kv_heads == 0
    )
    if not shapes_agree:
        raise PvqError(
            f"cannot resolve the heads of {where}: q {q.out_features}, k {k.out_features}, v {v.out_features}, "
            f"o {o.in_features} features do not match {heads} heads, {kv_heads} KV heads of dimension {head_dim}"
        )
    module = attention.module
    linear_parameters = {id(p) for ref in attention.linears for p in ref.module.parameters()}
    extras = {}
    for name, parameter in module.named_parameters():
        if id(parameter) in linear_parameters or parameter.dim() == 0:
            continue
        extras[f"{attention.name}.{name}"] = _extra_kind(name, parameter.shape[0], heads, q, k, head_dim, where)
    extras = {name: kind for name, kind in extras.items() if kind != "keep"}
    return HeadUnit(attention.name, block.index, module, q, k, v, o, heads, kv_heads, head_dim, extras)


def _extra_kind(name: str, leading: int, heads: int, q: LinearRef, k: LinearRef, head_dim: int, where: str) -> str:
    """What the leading dimension of a non-linear attention parameter counts: "head", "q", "k" or "keep".

    A q or k norm of the config's head dimension normalizes each head on its own ("keep"), whatever the width of
    the projection: with one KV head the k projection is exactly ``head_dim`` wide, and only the config tells a
    per-head norm (Gemma-3) from a norm over the whole projection (OLMo-2)."""
    leaf = name.rpartition(".")[2] if "." in name else name
    stem = name.split(".")[0]
    if leading == head_dim and stem.startswith(("q", "k")):
        return "keep"
    if leading == q.out_features and stem.startswith("q"):
        return "q"
    if leading == k.out_features and stem.startswith("k"):
        return "k"
    if leading == heads:
        return "head"
    if leading == head_dim:
        return "keep"
    raise PvqError(
        f"cannot resolve the heads of {where}: parameter {leaf} has {leading} rows, matching neither the heads "
        f"({heads}), q ({q.out_features}), k ({k.out_features}) nor head_dim ({head_dim})"
    )
