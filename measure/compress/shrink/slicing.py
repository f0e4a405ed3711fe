"""Physically remove channels and heads: slice the state dict, update the config, rebuild the model class.

A :class:`Cut` keeps the indices ``keep`` along dimension ``dim`` of one parameter (of one routed expert's slice
``tensor[expert]`` of a fused 3-D tensor). The shrunk model is the model class built from the updated config with
the sliced state dict loaded strictly, which is exactly what plain ``from_pretrained`` of the saved folder does;
a config that cannot describe the new shapes (a family whose head_dim is derived from hidden_size / heads, or
per-layer widths where the config holds one number) is a PvqError naming the family, raised before anything is
written.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from measure.models.architecture import LinearRef
from theory.errors import PvqError

WIDTH_KEYS = {
    "mlp": ("shared_intermediate_size", "intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size"),
    "shared": ("shared_expert_intermediate_size",),
    "expert": ("moe_intermediate_size", "intermediate_size"),
}
"""Config fields that may hold the hidden width of each kind of MLP unit, tried in order (the field whose value is
the unit's width, else the first present and unset, as GPT-2's n_inner)."""


@dataclass(frozen=True)
class Cut:
    """Keep ``keep`` along ``dim`` of ``parameter`` (of ``parameter[expert]`` for a fused expert tensor)."""

    parameter: str
    dim: int
    keep: torch.Tensor
    expert: int | None = None


def _fused_rows(ref: LinearRef, keep: torch.Tensor, width: int) -> torch.Tensor:
    """Rows of a gate_up tensor holding channels ``keep``: gate then up halves, or interleaved gate/up pairs."""
    if ref.stacked and not getattr(ref.module, "is_concatenated", True):
        return torch.stack([2 * keep, 2 * keep + 1], dim=-1).flatten()
    return torch.cat([keep, keep + width])


def kept_rows(ref: LinearRef, keep: torch.Tensor, width: int) -> torch.Tensor:
    """The output rows of a producing layer that carry channels ``keep`` of a ``width``-channel unit (both halves
    of a fused gate_up)."""
    fused = ref.parameter_name.endswith("gate_up_proj") or ref.role.endswith("gate_up")
    return _fused_rows(ref, keep, width) if fused else keep


def row_cuts(ref: LinearRef, keep: torch.Tensor, width: int) -> list[Cut]:
    """Cuts keeping output rows ``keep`` (channels of a ``width``-channel unit) of a producing layer."""
    rows = kept_rows(ref, keep, width)
    if ref.stacked:
        dim = 1 if getattr(ref.module, "is_transposed", False) else 0
        cuts = [Cut(ref.parameter_name, dim, rows, ref.expert_index)]
        if ref.bias() is not None:
            cuts.append(Cut(f"{ref.parameter_name}_bias", 0, rows, ref.expert_index))
        return cuts
    cuts = [Cut(ref.parameter_name, 1 if isinstance(ref.module, Conv1D) else 0, rows)]
    if ref.bias() is not None:
        cuts.append(Cut(f"{ref.name}.bias", 0, rows))
    return cuts


def column_cuts(ref: LinearRef, keep: torch.Tensor) -> list[Cut]:
    """Cuts keeping input columns ``keep`` of a consuming layer (its bias is per output and stays)."""
    if ref.stacked:
        return [Cut(ref.parameter_name, 0 if getattr(ref.module, "is_transposed", False) else 1, keep,
                    ref.expert_index)]  # fmt: skip
    return [Cut(ref.parameter_name, 0 if isinstance(ref.module, Conv1D) else 1, keep)]


def apply_cuts(state: dict[str, torch.Tensor], cuts: Iterable[Cut]) -> dict[str, torch.Tensor]:
    """A new state dict with every cut applied (identical cuts, as of a fused gate and up, apply once)."""
    by_parameter: dict[str, dict[tuple[int | None, int], Cut]] = {}
    for cut in cuts:
        if cut.parameter not in state:
            raise PvqError(f"cannot slice {cut.parameter}: no such entry in the model's state dict")
        by_parameter.setdefault(cut.parameter, {})[(cut.expert, cut.dim)] = cut
    sliced = dict(state)
    for name, found in by_parameter.items():
        tensor = state[name]
        for (expert, dim), cut in found.items():
            if expert is None:
                tensor = tensor.index_select(dim, cut.keep)
        per_expert = {expert: cut for (expert, _), cut in found.items() if expert is not None}
        if per_expert:
            if set(per_expert) != set(range(tensor.shape[0])):
                raise PvqError(f"cannot slice {name}: cuts for experts {sorted(per_expert)} of {tensor.shape[0]}")
            tensor = torch.stack(
                [tensor[e].index_select(per_expert[e].dim, per_expert[e].keep) for e in range(tensor.shape[0])]
            )
        sliced[name] = tensor.contiguous()
    return sliced


def width_key(config: object, kind: str, width: int, family: str) -> str:
    """The config field holding the width of ``kind`` units (see :data:`WIDTH_KEYS`)."""
    candidates = [key for key in WIDTH_KEYS[kind] if hasattr(config, key)]
    for key in candidates:
        if getattr(config, key) == width:
            return key
    for key in candidates:
        if getattr(config, key) is None:
            return key
    raise PvqError(f"the {family} config has no field holding the {kind} width {width} (tried "
                   f"{', '.join(WIDTH_KEYS[kind])}); this family cannot be shrunk in width")  # fmt: skip


def updated_config(model: nn.Module, text_changes: dict[str, int], tower: str = "language") -> object:
    """A deep copy of the model's config with ``text_changes`` set on its language config (``tower`` "language")
    or its vision config ("vision")."""
    config = copy.deepcopy(model.config)
    if tower == "vision":
        text = config.vision_config
    else:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key, value in text_changes.items():
        try:
            setattr(text, key, value)
        except AttributeError:
            raise PvqError(f"the {text.model_type} config cannot set {key} = {value} (a derived field); "
                           "this width cannot be saved for this family") from None  # fmt: skip
    return config


def check_shapes(model: nn.Module, config: object, state: dict[str, torch.Tensor], family: str, hint: str) -> None:
    """Raise unless the model class built from ``config`` (on the meta device) has exactly ``state``'s shapes."""
    try:
        with torch.device("meta"):
            fresh = type(model)(copy.deepcopy(config))
    except (ValueError, AssertionError, TypeError) as error:
        raise PvqError(f"the {family} config cannot describe the shrunk widths ({error}); {hint}") from None
    expected = {name: tuple(t.shape) for name, t in fresh.state_dict().items()}
    actual = {name: tuple(t.shape) for name, t in state.items()}
    if expected != actual:
        differing = sorted(set(expected.items()) ^ set(actual.items()))[:4]
        raise PvqError(f"the {family} config cannot describe the shrunk widths (first differences: "
                       f"{differing}); {hint}")  # fmt: skip


def rebuild(model: nn.Module, config: object, state: dict[str, torch.Tensor]) -> nn.Module:
    """The model class built from ``config`` in the model's dtype and device, ``state`` loaded strictly."""
    parameter = next(model.parameters())
    fresh = type(model)(config).to(dtype=parameter.dtype, device=parameter.device)
    fresh.load_state_dict(state, strict=True)
    fresh.generation_config = copy.deepcopy(model.generation_config)
    return fresh.eval()
