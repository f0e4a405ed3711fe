"""Walk any Hugging Face causal LM: embeddings, decoder blocks, sublayers, linear layers, experts, lm_head.

`describe(model)` is the one place in pvq that knows how a model is wired; capture, compression methods,
layer removal and `pvq info` ask it instead of hard-coding module names. It follows SliceGPT's
ModelAdapter/LayerAdapter idea (Ashkboos et al., arXiv 2401.15024, Sec. 4) but discovers the wiring instead
of declaring it per family:

* the decoder blocks are the nn.ModuleList of `config.num_hidden_layers` modules of one class that sits
  beside the input embeddings (for a vision-language model that is the language backbone, never the vision
  tower); the backbone is the module holding that list; the final norm is the backbone's norm child;
* inside a block, the token mixers are the children named or classed like one: attention, linear attention /
  gated delta-net, a state-space layer (Mamba, Mamba2) or a short convolution, one per block or two side by
  side on one input (Falcon-H1); the channel mixers the children named or classed like an MLP / mixture of
  experts: none (Mamba2), one, or several on one input (OPT keeps fc1/fc2 directly in the block: a virtual
  MLP); blocks of one model may hold different kinds and be of different classes (Jamba);
* non-linear parameters (norms, depthwise convolution kernels, A_log, D, dt_bias) are counted in every size
  and never compressed: they stay at 16 bits (:func:`unquantized_parameters`);
* every nn.Linear and GPT-2 `Conv1D` inside is a `LinearRef` with a uniform (out, in) weight view; fused 3-D
  expert tensors (transformers >= 5, `experts.gate_up_proj` / `experts.down_proj`) give one view per expert;
* what a *name* means (roles, norm placement) comes from the table in `measure.models.families`.

A block computes, with x its input, A the token mixer(s) (their outputs summed when side by side) and M the
channel mixer(s) (M = 0 when absent), norm = identity when absent:
  sequential: h = x + A_out(A(A_in(x))),  y = h + M_out(M(M_in(h)))      (pre-norm, sandwich norms A_out/M_out)
  parallel:   y = x + A(A_in(x)) + M(M_in(x))                          (GPT-NeoX, GPT-J, Phi, Falcon)
  post-norm:  h = A_res(x + A(x)),  y = M_res(h + M(h))                    (OPT with do_layer_norm_before=False)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from measure.models import families
from theory.errors import PvqError, choose


@dataclass(frozen=True, eq=False)
class LinearRef:
    """One linear map y = x Wᵀ + b inside a decoder block, with W seen uniformly as (out_features, in_features).

    `name` is the module's dotted name in the model; for a fused 3-D expert tensor (no module per expert) it is
    `<experts>.<expert_index>.<gate|up|down>`, `stacked` is True, `module` is the experts module (its forward
    takes hidden states, top-k expert indices and top-k weights), and `parameter_name` names the tensor that
    holds the weight.
    Layers with the same `shared_input_group` read the same input tensor (one Gram XᵀX serves them all):
    q/k/v of one attention, gate/up of one MLP, attention and MLP of a parallel block with one shared norm,
    gate/up of one routed expert (the tokens routed to it).
    `out_features` and `in_features` are read off `weight_view()` when the LinearRef is made.
    """

    name: str
    role: str
    sublayer_kind: str
    block_index: int
    module: nn.Module
    shared_input_group: str
    expert_index: int | None
    out_features: int = field(init=False)
    in_features: int = field(init=False)
    parameter_name: str
    stacked: bool
    weight_view: Callable[[], torch.Tensor] = field(repr=False)
    bias_view: Callable[[], torch.Tensor | None] = field(repr=False)

    def __post_init__(self) -> None:
        """Read (out_features, in_features) off the weight view, the one place they come from."""
        out_features, in_features = self.weight_view().shape
        object.__setattr__(self, "out_features", int(out_features))
        object.__setattr__(self, "in_features", int(in_features))

    def weight(self) -> torch.Tensor:
        """W as an (out_features, in_features) view sharing storage with the model (change it via set_weight)."""
        return self.weight_view()

    def bias(self) -> torch.Tensor | None:
        """b as an (out_features,) view sharing storage with the model, or None."""
        return self.bias_view()

    def check_shape(self, weight: torch.Tensor) -> None:
        """PvqError unless ``weight`` is (out_features, in_features): the shape of every write."""
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise PvqError(
                f"set_weight({self.name}): got shape {tuple(weight.shape)}, expected "
                f"(out, in) = ({self.out_features}, {self.in_features})"
            )

    def set_weight(self, weight: torch.Tensor) -> None:
        """Write an (out_features, in_features) tensor into the model, whatever its storage layout."""
        self.check_shape(weight)
        with torch.no_grad():
            self.weight_view().copy_(weight)

    @property
    def parameter_count(self) -> int:
        """out·in weights plus out biases when the layer has a bias."""
        bias = self.bias()
        return self.out_features * self.in_features + (0 if bias is None else bias.numel())


@dataclass(frozen=True, eq=False)
class Experts:
    """The routed experts of a mixture-of-experts sublayer: a ModuleList of MLPs or one module of 3-D tensors."""

    name: str
    module: nn.Module
    count: int
    fused: bool


@dataclass(frozen=True, eq=False)
class Sublayer:
    """One residual sublayer of a block with the norms around it (see the module docstring's formulas).

    `kind` is its slot: "attention" for a token mixer (softmax attention, or the linear-attention, state-space
    or convolution mixer that stands in its place) and "mlp" for a channel mixer; `operator` is what it is,
    one of `families.MIXER_KINDS` or `families.CHANNEL_MIXER_KINDS`.
    `module` is None for a virtual MLP (OPT's fc1/fc2 sit directly in the block); `input_module` and
    `output_module` are then fc1 and fc2, so a pre-hook on `input_module` sees the sublayer input and a hook on
    `output_module` its output (before any output norm and the residual add).
    """

    kind: str
    operator: str
    name: str
    module: nn.Module | None
    input_norm: nn.Module | None
    output_norm: nn.Module | None
    residual_norm: nn.Module | None
    linears: tuple[LinearRef, ...]
    router: LinearRef | None
    experts: Experts | None

    @property
    def input_module(self) -> nn.Module:
        """The module whose (first) input is this sublayer's input."""
        return self.module if self.module is not None else self.linears[0].module

    @property
    def output_module(self) -> nn.Module:
        """The module whose output is this sublayer's output."""
        return self.module if self.module is not None else self.linears[-1].module


@dataclass(frozen=True, eq=False)
class Block:
    """One decoder block: its position, dotted name, module and typed sublayers.

    `mixers` are its token mixers in definition order (two run side by side on one input in Falcon-H1);
    `channel_mixers` its MLP / mixture-of-experts sublayers (none in Mamba2, a mixture of experts beside a shared
    MLP in Granite-4.0-H); `parallel` per the module docstring (token and channel mixers read one input).
    """

    index: int
    name: str
    module: nn.Module
    parallel: bool
    mixers: tuple[Sublayer, ...]
    channel_mixers: tuple[Sublayer, ...]

    @property
    def sublayers(self) -> tuple[Sublayer, ...]:
        """Token mixers, then channel mixers."""
        return self.mixers + self.channel_mixers

    @property
    def kinds(self) -> tuple[str, ...]:
        """What each sublayer is, e.g. ("mamba", "attention", "mlp") for a Falcon-H1 block."""
        return tuple(sublayer.operator for sublayer in self.sublayers)

    def slot(self, kind: str) -> tuple[Sublayer, ...]:
        """The token mixers (`kind` "attention") or the channel mixers ("mlp") of this block."""
        return {"attention": self.mixers, "mlp": self.channel_mixers}[kind]

    @property
    def attention(self) -> Sublayer:
        """The block's one token mixer (PvqError when it has none, or several side by side)."""
        if len(self.mixers) != 1:
            raise PvqError(
                f"block {self.name} has {len(self.mixers)} token mixers "
                f"({', '.join(m.operator for m in self.mixers) or 'it is an MLP block'}); ask for block.mixers"
            )
        return self.mixers[0]

    @property
    def mlp(self) -> Sublayer | None:
        """The block's channel mixer: the mixture of experts when a shared MLP sits beside it; None if none."""
        with_experts = [sublayer for sublayer in self.channel_mixers if sublayer.experts is not None]
        return (with_experts or list(self.channel_mixers) or [None])[0]

    @property
    def linears(self) -> tuple[LinearRef, ...]:
        """Token-mixer linears, then channel-mixer linears."""
        return tuple(ref for sublayer in self.sublayers for ref in sublayer.linears)


@dataclass(frozen=True, eq=False)
class Architecture:
    """What `describe` found. `family` is the tower config's model_type; `config` the tower's config (the
    language config, or the vision config); `blocks_path` the dotted path of the blocks' nn.ModuleList
    (`model.get_submodule(blocks_path)`). For the vision tower `embeddings` is the patch embedding, `lm_head`
    is None and `projector` the module that maps vision features into the language model."""

    model: nn.Module
    model_class: str
    family: str
    backbone: nn.Module
    embeddings: nn.Module
    blocks: tuple[Block, ...]
    final_norm: nn.Module | None
    lm_head: nn.Module | None
    blocks_path: str
    config: object
    tied_embeddings: bool
    tower: str = "language"
    projector: nn.Module | None = None

    @property
    def linears(self) -> tuple[LinearRef, ...]:
        """Every linear layer of every block, in block order."""
        return tuple(ref for block in self.blocks for ref in block.linears)


TOWERS = ("language", "vision")
"""What `describe` walks: the language decoder (of a causal LM or a VLM) or the vision encoder of a VLM."""


def describe(model: nn.Module, tower: str = "language") -> Architecture:
    """Discover the wiring of a Hugging Face causal LM (or the language backbone of a vision-language model), or
    with `tower="vision"` the vision encoder of a vision-language model."""
    choose("tower", tower, TOWERS)
    if tower == "vision":
        return _describe_vision(model)
    model_class = type(model).__name__
    config = _text_config(model, model_class)
    embeddings = _input_embeddings(model, model_class)
    names = {module: name for name, module in model.named_modules()}
    blocks_path = _blocks_path(model, model_class, config, names[embeddings])
    backbone = model.get_submodule(blocks_path.rpartition(".")[0])
    block_list = model.get_submodule(blocks_path)
    lm_head = model.get_output_embeddings()
    if lm_head is None:
        raise PvqError(f"cannot walk {model_class}: get_output_embeddings() returned no lm_head")
    blocks = tuple(
        _describe_block(index, block, names, config, model_class) for index, block in enumerate(block_list)
    )
    return Architecture(
        model=model,
        model_class=model_class,
        family=str(getattr(config, "model_type", "")),
        backbone=backbone,
        embeddings=embeddings,
        blocks=blocks,
        final_norm=_final_norm(backbone, block_list),
        lm_head=lm_head,
        blocks_path=blocks_path,
        config=config,
        tied_embeddings=getattr(lm_head, "weight", None) is getattr(embeddings, "weight", False),
    )


def _describe_vision(model: nn.Module) -> Architecture:
    """The vision encoder: the module configured by `config.vision_config`, its nn.ModuleList of blocks (as many
    as the vision config's depth), its patch embedding, last norm, and the projector beside it."""
    model_class = type(model).__name__
    config = getattr(getattr(model, "config", None), "vision_config", None)
    if config is None:
        raise PvqError(f"{model_class} has no vision tower to walk: its config has no vision_config")
    tower_name = next(name for name, module in model.named_modules() if getattr(module, "config", None) is config)
    tower = model.get_submodule(tower_name)
    depth = next(getattr(config, key) for key in families.VISION_DEPTH_KEYS if hasattr(config, key))
    lists = [n for n, m in tower.named_modules() if isinstance(m, nn.ModuleList) and len(m) == depth]
    if len(lists) != 1:
        raise PvqError(
            f"cannot walk the vision tower {tower_name} of {model_class}: expected one nn.ModuleList of its "
            f"{depth} blocks, found {lists or 'none'}"
        )
    blocks_path = f"{tower_name}.{lists[0]}"
    block_list = model.get_submodule(blocks_path)
    names = {module: name for name, module in model.named_modules()}
    projectors = [m for n, m in model.named_modules() if n.rpartition(".")[2] in families.PROJECTOR_NAMES]
    return Architecture(
        model=model,
        model_class=model_class,
        family=str(getattr(config, "model_type", "")),
        backbone=model.get_submodule(blocks_path.rpartition(".")[0]),
        embeddings=tower.get_input_embeddings(),
        blocks=tuple(
            _describe_block(index, block, names, config, model_class) for index, block in enumerate(block_list)
        ),
        final_norm=_final_norm(tower, block_list),
        lm_head=None,
        blocks_path=blocks_path,
        config=config,
        tied_embeddings=False,
        tower="vision",
        projector=projectors[0] if projectors else None,
    )


def linear_layers(model: nn.Module) -> Iterator[LinearRef]:
    """Every linear layer inside the decoder blocks (embeddings and lm_head excluded), in block order."""
    yield from describe(model).linears


def parameter_counts(arch: Architecture) -> dict[str, int]:
    """Parameters by part; each parameter is counted once, so a tied lm_head counts 0 (it is the embedding).

    Keys: embeddings, `block.<i>.attention` (all token mixers), `block.<i>.mlp` (all channel mixers),
    `block.<i>.other` (block norms), decoder (all blocks),
    final_norm, lm_head, other (position embeddings, vision tower, projector), total.
    embeddings + decoder + final_norm + lm_head + other = total = number of distinct model parameters.
    """
    seen: set[int] = set()

    def count(*modules: nn.Module | None) -> int:
        new = [p for m in modules if m is not None for p in m.parameters() if id(p) not in seen]
        seen.update(id(p) for p in new)
        return sum(p.numel() for p in new)

    counts = {"embeddings": count(arch.embeddings)}
    decoder = 0
    for block in arch.blocks:
        attention = count(*(m for sublayer in block.mixers for m in _sublayer_modules(sublayer)))
        mlp = count(*(m for sublayer in block.channel_mixers for m in _sublayer_modules(sublayer)))
        other = count(block.module)
        counts |= {
            f"block.{block.index}.attention": attention,
            f"block.{block.index}.mlp": mlp,
            f"block.{block.index}.other": other,
        }
        decoder += attention + mlp + other
    counts["decoder"] = decoder
    counts["final_norm"] = count(arch.final_norm)
    counts["lm_head"] = count(arch.lm_head)
    counts["other"] = count(arch.model)
    counts["total"] = sum(p.numel() for p in arch.model.parameters())
    return counts


def unquantized_parameters(arch: Architecture) -> int:
    """Decoder-block parameters outside every linear layer: norms, depthwise convolution kernels, A_log, D,
    dt_bias, gates. They are counted in every size and no compression method touches them: they stay at
    16 bits (`theory.accounting.BASE_BITS`)."""
    linear = {id(p) for ref in arch.linears for p in ref.module.parameters(recurse=not ref.stacked)}
    block_parameters = {id(p): p for block in arch.blocks for p in block.module.parameters()}
    return sum(p.numel() for key, p in block_parameters.items() if key not in linear)


def summary_table(arch: Architecture) -> pd.DataFrame:
    """One row per block linear layer: name, block, sublayer, role, expert, out, in, params, shared_input_group."""
    rows = [
        {
            "name": ref.name,
            "block": ref.block_index,
            "sublayer": ref.sublayer_kind,
            "role": ref.role,
            "expert": ref.expert_index,
            "out": ref.out_features,
            "in": ref.in_features,
            "params": ref.parameter_count,
            "shared_input_group": ref.shared_input_group,
        }
        for ref in arch.linears
    ]
    table = pd.DataFrame(rows)
    table["expert"] = table["expert"].astype("Int64")
    return table


def sublayer_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states a block or sublayer was called with (positional or `hidden_states=`), for pre-hooks."""
    return args[0] if args else kwargs["hidden_states"]


def sublayer_output(output: object) -> torch.Tensor:
    """The hidden states a block or sublayer returned (HF modules return a tensor or a tuple led by it)."""
    return output[0] if isinstance(output, tuple) else output


def _sublayer_modules(sublayer: Sublayer) -> tuple[nn.Module, ...]:
    if sublayer.module is not None:
        return (sublayer.module,)
    return tuple(ref.module for ref in sublayer.linears)


def _text_config(model: nn.Module, model_class: str) -> object:
    config = getattr(model, "config", None)
    if config is None:
        raise PvqError(f"cannot walk {model_class}: it has no `config`; pass a Hugging Face PreTrainedModel")
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if not isinstance(getattr(text_config, "num_hidden_layers", None), int):
        raise PvqError(f"cannot walk {model_class}: its (text) config has no integer num_hidden_layers")
    return text_config


def _input_embeddings(model: nn.Module, model_class: str) -> nn.Module:
    try:
        embeddings = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        embeddings = None
    if not isinstance(embeddings, nn.Module):
        raise PvqError(f"cannot walk {model_class}: get_input_embeddings() gave no embedding module")
    return embeddings


def _blocks_path(model: nn.Module, model_class: str, config: object, embeddings_name: str) -> str:
    """Dotted path of the ModuleList of num_hidden_layers blocks whose parent holds the embeddings.

    Lists of one block class are preferred; a list mixing block classes (Jamba's attention and Mamba blocks)
    is taken when it is the only candidate of the right length.
    """
    expected = config.num_hidden_layers
    beside_embeddings = []
    for name, module in model.named_modules():
        parent = name.rpartition(".")[0]
        if (
            isinstance(module, nn.ModuleList)
            and len(module) > 0
            and (parent == "" or embeddings_name.startswith(parent + "."))
        ):
            beside_embeddings.append((name, len(module), len({type(child) for child in module}) == 1))
    matching = [name for name, length, _ in beside_embeddings if length == expected]
    one_class = [name for name, length, same in beside_embeddings if length == expected and same]
    if len(one_class) == 1 or len(matching) == 1:
        return (one_class or matching)[0]
    found = ", ".join(f"{name} ({length})" for name, length, _ in beside_embeddings) or "none"
    raise PvqError(
        f"cannot walk {model_class}: expected one nn.ModuleList of config.num_hidden_layers = {expected} "
        f"blocks of one class beside the input embeddings ({embeddings_name}); found: {found}. "
        "After removing blocks, set config.num_hidden_layers to the new count"
    )


def _is_norm(module: nn.Module) -> bool:
    return "Norm" in type(module).__name__


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear | Conv1D)


def _final_norm(backbone: nn.Module, block_list: nn.Module) -> nn.Module | None:
    """The backbone's last norm-like direct child (the norm after the blocks), if any."""
    norms = [child for child in backbone.children() if child is not block_list and _is_norm(child)]
    return norms[-1] if norms else None


def _describe_block(index: int, block: nn.Module, names: dict, config: object, model_class: str) -> Block:
    block_name = names[block]
    children = [(n, c) for n, c in block.named_children() if not _is_norm(c)]
    mixers = _mixer_children(children, block_name, model_class)
    rest = [(n, c) for n, c in children if all(c is not m for _, m, _ in mixers)]
    channel_children, loose_linears = _channel_children(rest, block_name, model_class)
    norms = _norm_roles(
        [(n, c) for n, c in block.named_children() if _is_norm(c)], config, f"{model_class} block {block_name}"
    )
    if not mixers and "mlp_in" not in norms and "attention_in" in norms:  # Nemotron-H: one `norm` per block
        norms["mlp_in"] = norms.pop("attention_in")
    parallel = bool(mixers and (channel_children or loose_linears)) and _is_parallel(config, norms)
    if parallel and norms.get("mlp_in") is None:
        norms["mlp_in"] = norms.get("attention_in")
    channel_name = _channel_name(block_name, channel_children, loose_linears)
    mixer_group = f"{block_name}.{mixers[0][0] if len(mixers) == 1 else 'mixers'}:input"
    channel_group = f"{channel_name}:input"
    if parallel and norms.get("mlp_in") is norms.get("attention_in"):
        mixer_group = channel_group = f"{block_name}:input"
    mixer_sublayers = tuple(
        _sublayer(
            "attention",
            kind,
            f"{block_name}.{local}",
            module,
            norms,
            _dense_linears(module, families.MIXER_ROLES[kind], kind, index, mixer_group, names),
        )
        for local, module, kind in mixers
    )
    if loose_linears:  # OPT: fc1 / fc2 directly in the block, one virtual MLP
        channel_parts = [(channel_name, None)]
    else:
        channel_parts = [(f"{block_name}.{n}", c) for n, c in channel_children]
    channel_sublayers = tuple(
        _mlp_sublayer(name, module, loose_linears, norms, index, channel_group, names, model_class)
        for name, module in channel_parts
    )
    return Block(index, block_name, block, parallel, mixer_sublayers, channel_sublayers)


def _channel_name(block_name: str, channel_children: list, loose_linears: list) -> str:
    """Dotted name of the channel mixer(s): the child, `{a,b}` for several children or for the linears loose in
    the block (OPT's fc1/fc2), `<none>` when the block has none (Mamba2)."""
    parts = [n for n, _ in loose_linears or channel_children]
    if len(parts) == 1:
        return f"{block_name}.{parts[0]}"
    return f"{block_name}.{{{','.join(parts)}}}" if parts else f"{block_name}.<none>"


def _mixer_children(
    children: list[tuple[str, nn.Module]], block_name: str, model_class: str
) -> list[tuple[str, nn.Module, str]]:
    """(name, module, kind) of every token mixer: the children named like one, else those classed like one.

    The kind comes from the class name when it carries a marker (most specific first), else from the name. A
    child named like a mixer but classed like an MLP is a channel mixer (Nemotron-H names every sublayer `mixer`);
    a block with no token mixer must then hold a channel mixer.
    """
    found = [(n, c) for n, c in children if n in families.MIXER_CHILD_NAMES and not _classed_like_mlp(c)] or [
        (n, c) for n, c in children if _class_mixer_kind(c) is not None
    ]
    if not found and not any(_classed_like_mlp(c) for _, c in children):
        raise PvqError(
            f"cannot walk {model_class}: block {block_name} has 0 children that look like its token mixer "
            f"(attention, linear attention, state-space or convolution: named one of "
            f"{sorted(families.MIXER_CHILD_NAMES)}, or a class name containing one of "
            f"{[marker for marker, _ in families.MIXER_CLASS_MARKERS]}) and no MLP"
        )
    return [(n, c, _class_mixer_kind(c) or families.MIXER_CHILD_NAMES[n]) for n, c in found]


def _classed_like_mlp(module: nn.Module) -> bool:
    """Whether the class name says MLP / mixture of experts and no token-mixer kind."""
    class_name = type(module).__name__
    return _class_mixer_kind(module) is None and any(m in class_name for m in families.MLP_CLASS_MARKERS)


def _class_mixer_kind(module: nn.Module) -> str | None:
    """The token-mixer kind the module's class name says (`families.MIXER_CLASS_MARKERS`), or None."""
    class_name = type(module).__name__
    return next((kind for marker, kind in families.MIXER_CLASS_MARKERS if marker in class_name), None)


def _channel_children(
    children: list[tuple[str, nn.Module]], block_name: str, model_class: str
) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, nn.Module]]]:
    """(channel-mixer children, []), or for linear layers loose in the block (OPT) ([], those linears).

    A block may hold no channel mixer (Mamba2) or several that read one input (Granite-4.0-H: a mixture of
    experts beside a shared MLP).
    """
    loose_linears = [(n, c) for n, c in children if _is_linear(c)]
    channel = _named_like(children, families.MLP_CHILD_NAMES, families.MLP_CLASS_MARKERS)
    if loose_linears and not channel:
        return [], loose_linears
    if loose_linears:
        raise PvqError(
            f"cannot walk {model_class}: block {block_name} has linear layers outside its mixers and MLP: "
            f"{[n for n, _ in loose_linears]}"
        )
    return channel, []


def _named_like(
    children: list[tuple[str, nn.Module]], child_names: frozenset[str], class_markers: tuple[str, ...]
) -> list[tuple[str, nn.Module]]:
    """Children with a sublayer name; if none, children whose class name contains a marker."""
    return [(n, c) for n, c in children if n in child_names] or [
        (n, c) for n, c in children if any(marker in type(c).__name__ for marker in class_markers)
    ]


def _norm_roles(norms: list[tuple[str, nn.Module]], config: object, where: str) -> dict[str, nn.Module]:
    """Place each block-level norm: attention_in/out/residual, mlp_in/out/residual (see module docstring)."""
    sandwich = any(name in families.MLP_OUTPUT_NORMS for name, _ in norms)
    post_norm = any(getattr(config, flag, True) is False for flag in families.PRE_NORM_CONFIG_FLAGS)
    roles: dict[str, nn.Module] = {}
    for name, module in norms:
        if name in families.MLP_OUTPUT_NORMS:
            role = "mlp_out"
        elif sandwich and name in families.SANDWICH_ATTENTION_OUTPUT_NORMS:
            role = "attention_out"
        elif name in families.ATTENTION_INPUT_NORMS:
            role = "attention_residual" if post_norm else "attention_in"
        elif name in families.MLP_INPUT_NORMS:
            role = "mlp_residual" if post_norm else "mlp_in"
        else:
            raise PvqError(
                f"cannot walk {where}: its norm `{name}` ({type(module).__name__}) is not in the naming table; "
                "add it to measure/models/families.py"
            )
        roles[role] = module
    return roles


def _is_parallel(config: object, norms: dict[str, nn.Module]) -> bool:
    """A config flag decides when present; otherwise a lone attention input norm means a parallel block."""
    for flag in families.PARALLEL_CONFIG_FLAGS:
        if hasattr(config, flag):
            return bool(getattr(config, flag))
    return set(norms) == {"attention_in"}


def _mlp_sublayer(
    name: str,
    module: nn.Module | None,
    loose_linears: list[tuple[str, nn.Module]],
    norms: dict[str, nn.Module],
    block_index: int,
    group: str,
    names: dict,
    model_class: str,
) -> Sublayer:
    """The MLP sublayer: dense, mixture of experts, or virtual (OPT's fc1/fc2 directly in the block)."""
    experts = None if module is None else _find_experts(module, name)
    router = None
    if module is None:
        linears = tuple(
            _module_ref(child, names[child], families.MLP_ROLES, "mlp", block_index, group)
            for _, child in loose_linears
        )
    elif experts is None:
        linears = _dense_linears(module, families.MLP_ROLES, "mlp", block_index, group, names)
    else:
        router, linears = _moe_linears(module, experts, block_index, group, names, model_class)
    return _sublayer("mlp", "mlp" if experts is None else "moe", name, module, norms, linears, router, experts)


def _sublayer(
    kind: str,
    operator: str,
    name: str,
    module: nn.Module | None,
    norms: dict[str, nn.Module],
    linears: tuple[LinearRef, ...],
    router: LinearRef | None = None,
    experts: Experts | None = None,
) -> Sublayer:
    """A Sublayer in slot `kind` ("attention" or "mlp") of kind `operator`, with the block's
    `<kind>_in/_out/_residual` norms around it."""
    return Sublayer(
        kind=kind,
        operator=operator,
        name=name,
        module=module,
        input_norm=norms.get(f"{kind}_in"),
        output_norm=norms.get(f"{kind}_out"),
        residual_norm=norms.get(f"{kind}_residual"),
        linears=linears,
        router=router,
        experts=experts,
    )


def _find_experts(module: nn.Module, name: str) -> Experts | None:
    """The routed experts: a child ModuleList of MLPs, or a child that owns 3-D (expert, out, in) tensors."""
    for child_name, child in module.named_children():
        if isinstance(child, nn.ModuleList) and len(child) > 0:
            return Experts(f"{name}.{child_name}", child, len(child), fused=False)
        stacked = [p for p in child.parameters(recurse=False) if p.dim() == 3]
        if stacked:
            return Experts(f"{name}.{child_name}", child, int(stacked[0].shape[0]), fused=True)
    return None


def _moe_linears(
    module: nn.Module, experts: Experts, block_index: int, group: str, names: dict, model_class: str
) -> tuple[LinearRef, tuple[LinearRef, ...]]:
    """Router (the child whose 2-D weight has one row per expert), shared-expert layers, then the experts.

    The router, the shared expert's input layers and its gate read the MoE input (`group`); expert e's
    gate/up read the tokens routed to e (group `<experts>.<e>:input`).
    """
    router = None
    shared: list[LinearRef] = []
    for child_name, child in module.named_children():
        if child is experts.module:
            continue
        weight = getattr(child, "weight", None)
        if isinstance(weight, nn.Parameter) and weight.dim() == 2 and weight.shape[0] == experts.count:
            router = _module_ref(child, names[child], {child_name: "router"}, "router", block_index, group)
        elif _is_linear(child):
            kind = "router" if child_name in families.MOE_GATE_ROLES else "mlp"
            shared.append(_module_ref(child, names[child], families.MOE_GATE_ROLES, kind, block_index, group))
        else:
            shared.extend(
                _dense_linears(child, families.MLP_ROLES, "mlp", block_index, group, names, role_prefix="shared.")
            )
    if router is None:
        raise PvqError(
            f"cannot walk {model_class}: mixture-of-experts sublayer {type(module).__name__} has no router "
            f"(a child with a 2-D weight of {experts.count} rows, one per expert)"
        )
    expert_refs = (
        _fused_expert_refs(experts, block_index, model_class)
        if experts.fused
        else tuple(
            ref
            for index, expert in enumerate(experts.module)
            for ref in _dense_linears(
                expert,
                families.MLP_ROLES,
                "expert",
                block_index,
                f"{experts.name}.{index}:input",
                names,
                role_prefix="expert.",
                expert_index=index,
            )
        )
    )
    return router, (router, *shared, *expert_refs)


def _dense_linears(
    module: nn.Module,
    roles: dict[str, str],
    kind: str,
    block_index: int,
    group: str,
    names: dict,
    role_prefix: str = "",
    expert_index: int | None = None,
) -> tuple[LinearRef, ...]:
    """Every nn.Linear / Conv1D inside `module`, in definition order."""
    return tuple(
        _module_ref(child, names[child], roles, kind, block_index, group, expert_index, role_prefix)
        for child in module.modules()
        if _is_linear(child)
    )


def _role_and_group(leaf: str, roles: dict[str, str], role_prefix: str, group: str, name: str) -> tuple[str, str]:
    """Role from the naming table; output roles and unknown names read a private input (own group)."""
    role = roles.get(leaf)
    if role is None or role in families.PRIVATE_INPUT_ROLES:
        return role_prefix + (role or leaf), f"{name}:input"
    return role_prefix + role, group


def _module_ref(
    module: nn.Module,
    name: str,
    roles: dict[str, str],
    kind: str,
    block_index: int,
    group: str,
    expert_index: int | None = None,
    role_prefix: str = "",
) -> LinearRef:
    """A LinearRef for an nn.Linear (weight (out, in)), Conv1D (weight (in, out)) or router (weight (E, in))."""
    role, shared = _role_and_group(name.rpartition(".")[2], roles, role_prefix, group, name)
    transposed = isinstance(module, Conv1D)
    return LinearRef(
        name=name,
        role=role,
        sublayer_kind=kind,
        block_index=block_index,
        module=module,
        shared_input_group=shared,
        expert_index=expert_index,
        parameter_name=f"{name}.weight",
        stacked=False,
        weight_view=lambda: module.weight.detach().T if transposed else module.weight.detach(),
        bias_view=lambda: None if getattr(module, "bias", None) is None else module.bias.detach(),
    )


def _fused_expert_refs(experts: Experts, block_index: int, model_class: str) -> tuple[LinearRef, ...]:
    """Per-expert views into 3-D expert tensors, following the layout flags transformers puts on the module.

    `gate_up_proj` is (E, 2I, H) with gate rows first (is_concatenated) or gate/up rows interleaved, or its
    transpose (E, H, 2I) when is_transposed; `down_proj` is (E, H, I) or (E, I, H); without a gate the input
    tensor is `up_proj` (E, I, H). Biases, when present, are `<tensor>_bias` of shape (E, out).
    """
    module = experts.module
    has_gate = isinstance(getattr(module, "gate_up_proj", None), nn.Parameter)
    input_tensor = "gate_up_proj" if has_gate else "up_proj"
    if not all(isinstance(getattr(module, t, None), nn.Parameter) for t in (input_tensor, "down_proj")):
        stacked = [n for n, p in module.named_parameters(recurse=False) if p.dim() == 3]
        raise PvqError(
            f"cannot walk {model_class}: experts {type(module).__name__} hold 3-D tensors {stacked}, not the "
            "gate_up_proj (or up_proj) and down_proj layout pvq reads"
        )
    layout = _ExpertLayout(
        transposed=bool(getattr(module, "is_transposed", False)),
        concatenated=bool(getattr(module, "is_concatenated", True)),
    )
    input_parts = (("gate", 0), ("up", 1)) if has_gate else (("up", None),)
    refs = []
    for index in range(experts.count):
        input_group = f"{experts.name}.{index}:input"
        for role, half in input_parts:
            refs.append(_fused_ref(experts, input_tensor, index, role, half, layout, block_index, input_group))
        down_group = f"{experts.name}.{index}.down:input"
        refs.append(_fused_ref(experts, "down_proj", index, "down", None, layout, block_index, down_group))
    return tuple(refs)


@dataclass(frozen=True)
class _ExpertLayout:
    """How transformers stores fused expert tensors (flags of `integrations.moe.use_experts_implementation`)."""

    transposed: bool
    concatenated: bool

    def weight(self, tensor: torch.Tensor, expert: int, half: int | None) -> torch.Tensor:
        """Expert `expert`'s (out, in) weight; `half` 0/1 picks gate/up rows of a fused gate_up tensor."""
        return self.rows(tensor[expert].T if self.transposed else tensor[expert], half)

    def rows(self, tensor: torch.Tensor, half: int | None) -> torch.Tensor:
        """All rows (half None), or the gate (0) / up (1) rows: first/second half, or even/odd when interleaved."""
        if half is None:
            return tensor
        if self.concatenated:
            size = tensor.shape[0] // 2
            return tensor[half * size : (half + 1) * size]
        return tensor[half::2]


def _fused_ref(
    experts: Experts,
    tensor_name: str,
    expert: int,
    role: str,
    half: int | None,
    layout: _ExpertLayout,
    block_index: int,
    group: str,
) -> LinearRef:
    module = experts.module

    def weight_view() -> torch.Tensor:
        return layout.weight(getattr(module, tensor_name).detach(), expert, half)

    def bias_view() -> torch.Tensor | None:
        bias = getattr(module, f"{tensor_name}_bias", None)
        return None if bias is None else layout.rows(bias.detach()[expert], half)

    return LinearRef(
        name=f"{experts.name}.{expert}.{role}",
        role=f"expert.{role}",
        sublayer_kind="expert",
        block_index=block_index,
        module=module,
        shared_input_group=group,
        expert_index=expert,
        parameter_name=f"{experts.name}.{tensor_name}",
        stacked=True,
        weight_view=weight_view,
        bias_view=bias_view,
    )


def check_block_indices(indices: Iterable[int], blocks: int, what: str = "block") -> list[int]:
    """Sorted distinct indices, each in 0..blocks−1; PvqError for a bad, repeated or out-of-range index."""
    given = list(indices)
    for index in given:
        if not isinstance(index, int | np.integer) or isinstance(index, bool) or not 0 <= index < blocks:
            raise PvqError(f"{what} index {index!r} is out of range: the model has blocks 0..{blocks - 1}")
    if len(set(given)) != len(given):
        raise PvqError(f"{what} indices {given} list a block twice; give each block once")
    return sorted(int(index) for index in given)
