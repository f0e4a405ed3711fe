"""Calibration statistics of routed experts: per-expert Grams of routed tokens and router-weighted Grams.

A mixture-of-experts sublayer computes y_t = Σ_{e ∈ topk(t)} g_{t,e} · E_e(x_t) with router weights g.
For expert e with routed tokens T_e this module accumulates, for its gate/up input x and its down-projection
input z = act(x W_gateᵀ + b_gate) ⊙ (x W_upᵀ + b_up):

* the Gram of the routed inputs H_e = Σ_{t ∈ T_e} x_t x_tᵀ (and Σ z_t z_tᵀ): the per-layer error objective of
  GPTQ / SparseGPT / Wanda restricted to the tokens the expert actually sees;
* the router-weighted Gram Σ_{t ∈ T_e} g_{t,e}² x_t x_tᵀ (and for z): its diagonal gives MoE-Pruner's score
  |W_ij| · ‖X_j · gate‖₂ (Xie et al. 2024, arXiv 2410.12013, Eq. 4), and for the down projection it is exactly
  the expert's share of the sublayer output error, ‖Σ_t g_t ΔW z_t‖² summed over tokens.

Routing can leave an expert without calibration tokens. ``route="all"`` makes every expert see every token for
its (unweighted) Grams, as llm-compressor's MoE calibration does (the sublayer output is unchanged: only the
statistics see all tokens); the router-weighted Grams always follow the real routing. Either way the number of
tokens routed to each expert is recorded, and :meth:`ExpertCapture.empty_experts` names those that got none.

Fused 3-D expert tensors (transformers >= 5, ``experts.gate_up_proj`` / ``experts.down_proj``) are read from
the experts module's inputs (hidden_states, top_k_index, top_k_weights); z is recomputed with the module's own
``_apply_gate`` (transformers' gating: act(gate)·up, or GPT-OSS's clamped GLU) or ``act_fn`` without a gate.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn

from measure.capture.gram import GramAccumulator
from measure.models.architecture import Block, Experts, LinearRef
from theory.errors import PvqError, choose

EXPERT_ROUTES = ("routed", "all")
ROUTER_WEIGHTED_METHODS = frozenset({"moe_pruner"})
"""Methods whose score reads the router-weighted Gram of an expert (MoE-Pruner); the others read H_e."""


def expert_hidden(module: nn.Module, expert: int, rows: torch.Tensor) -> torch.Tensor:
    """The down-projection input of ``expert`` for input rows x (n × hidden): act(x W_gateᵀ + b) ⊙ (x W_upᵀ + b).

    Uses the fused tensor in its stored layout (``is_transposed``) and the module's gating exactly as
    transformers' experts implementations do (``_apply_gate`` on the joint gate/up output, else ``act_fn``).
    """
    has_gate = isinstance(getattr(module, "gate_up_proj", None), nn.Parameter)
    tensor_name = "gate_up_proj" if has_gate else "up_proj"
    weight = getattr(module, tensor_name)[expert]
    projected = rows @ weight if getattr(module, "is_transposed", False) else rows @ weight.T
    bias = getattr(module, f"{tensor_name}_bias", None)
    if bias is not None:
        projected = projected + bias[expert]
    return module._apply_gate(projected) if has_gate else module.act_fn(projected)


@dataclass
class ExpertCapture:
    """Per-expert Grams, filled by forward pre-hooks on fused expert modules (register them with :meth:`hooks`).

    Keys are the experts' ``LinearRef.shared_input_group`` names (``<experts>.<e>:input`` for gate/up,
    ``<experts>.<e>.down:input`` for down); ``routed_tokens`` is keyed by ``<experts>.<e>``.
    """

    route: str = "routed"
    keep_rows: int = 0
    grams: dict[str, GramAccumulator] = field(default_factory=dict)
    weighted: dict[str, GramAccumulator] = field(default_factory=dict)
    routed_tokens: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        choose("expert route", self.route, EXPERT_ROUTES)

    def hooks(self, block: Block) -> list[torch.utils.hooks.RemovableHandle]:
        """Register the pre-hook on ``block``'s experts (none for a dense block); returns the handles."""
        experts = None if block.mlp is None else block.mlp.experts
        if experts is None:
            return []
        if not experts.fused:
            raise PvqError(
                f"{experts.name}: expert capture reads fused 3-D expert tensors (transformers >= 5); "
                f"{type(experts.module).__name__} keeps its experts in a ModuleList"
            )
        self._allocate(experts, block)
        signature = inspect.signature(experts.module.forward)

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden, index, weights = list(signature.bind(*args, **kwargs).arguments.values())[:3]
            with torch.no_grad():
                self._add(experts, hidden, index, weights)

        return [experts.module.register_forward_pre_hook(hook, with_kwargs=True)]

    def gram_for(self, ref: LinearRef, weighted: bool = False) -> GramAccumulator:
        """The Gram of an expert layer's input: H_e (route-dependent) or the router-weighted Σ g² x xᵀ."""
        table = self.weighted if weighted else self.grams
        if ref.shared_input_group not in table:
            raise PvqError(f"no expert statistics for {ref.name}; register ExpertCapture.hooks on its block")
        return table[ref.shared_input_group]

    def empty_experts(self) -> list[str]:
        """Experts that no calibration token was routed to."""
        return [name for name, count in self.routed_tokens.items() if count == 0]

    def token_table(self) -> pd.DataFrame:
        """One row per expert: its name and the number of calibration tokens routed to it."""
        return pd.DataFrame(list(self.routed_tokens.items()), columns=["expert", "routed_tokens"])

    def _allocate(self, experts: Experts, block: Block) -> None:
        refs = {ref.shared_input_group: ref for ref in block.mlp.linears if ref.expert_index is not None}
        for group, ref in refs.items():
            for table in (self.grams, self.weighted):
                table.setdefault(group, GramAccumulator(ref.in_features, self.keep_rows, group))
        for expert in range(experts.count):
            self.routed_tokens.setdefault(f"{experts.name}.{expert}", 0)

    def _add(self, experts: Experts, hidden: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> None:
        x = hidden.reshape(-1, hidden.shape[-1])
        index = index.reshape(x.shape[0], -1)
        weights = weights.reshape(x.shape[0], -1).to(x.dtype)
        for expert in range(experts.count):
            hits = index == expert
            routed = hits.any(dim=-1)
            gate = (weights * hits).sum(dim=-1)[routed, None]
            name = f"{experts.name}.{expert}"
            self.routed_tokens[name] += int(routed.sum())
            rows = x if self.route == "all" else x[routed]
            hidden_units = expert_hidden(experts.module, expert, rows)
            routed_units = hidden_units if self.route == "routed" else hidden_units[routed]
            for group, values, routed_values in (
                (f"{name}:input", rows, x[routed]),
                (f"{name}.down:input", hidden_units, routed_units),
            ):
                _add_rows(self.grams[group], values)
                _add_rows(self.weighted[group], routed_values * gate)


def _add_rows(accumulator: GramAccumulator, rows: torch.Tensor) -> None:
    if rows.shape[0]:
        accumulator.add(rows)
