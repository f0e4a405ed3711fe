"""Importance of decoder blocks of any kind, of their token-mixer and channel-mixer sublayers, and of experts.

Every metric is a pure function of statistics gathered in one calibration pass (:func:`measure_importance`):
the block statistics of :func:`measure.capture.statistics.capture` plus the sublayer and router statistics
recorded by
the hooks of this module. With x the residual stream entering a unit (block or sublayer) and y = x + branch
the residual stream leaving it, over all calibration tokens t:

* Block Influence (ShortGPT, Men et al., arXiv 2403.03853, Eq. 1): BI_i = 1 − E_t[cos(x_{i,t}, x_{i+1,t})].
* Attention / MLP drop score (He et al., "What Matters in Transformers? Not All Attention is Needed",
  arXiv 2406.15786, the similarity metric of LLM-Drop): S = 1 − E_t[cos(X_t, X_t + Sublayer(Norm(X_t)))],
  X the residual stream entering the sublayer. It is Block Influence applied to the sublayer's residual
  update, so one function (:func:`influence`) computes both.
* Angular distance over n consecutive blocks (Gromov et al., "The Unreasonable Ineffectiveness of the Deeper
  Layers", arXiv 2403.17887): d(ℓ, n) = E_seq[(1/π)·arccos(cos(x^ℓ_T, x^{ℓ+n}_T))] on the last token T
  of every calibration sequence, x^ℓ the input of block ℓ (x^L the output of the last block, before the final
  norm); the blocks to drop are ℓ*(n), …, ℓ*(n)+n−1 with ℓ*(n) = argmin_ℓ d(ℓ, n).
* Removal error in ledger units: the unit replaced by the identity on the residual stream outputs x instead
  of y, so its relative error is ‖y − x‖² / ‖y‖² (summed over tokens) and its output SQNR is
  10·log10(‖y‖² / ‖y − x‖²) dB, the same "signal energy over error energy" the per-layer ledger reports.
* NRI (normalized relative importance) of a unit: the relative perplexity change when it is removed divided by
  its parameter count, (PPL_without − PPL) / PPL / parameters; the perplexity-based block importance of
  BlockPruner (Zhong et al., arXiv 2406.10594) normalized per parameter.
* Router-weighted expert score (after MoE-Pruner, Xie et al., arXiv 2410.12013, which weights each
  token's contribution by its router gate): s_e = Σ_t g_{t,e}, the gate weight the router gives expert e
  summed over the calibration tokens routed to it (top-k).

In a sequential block the attention reads X = x and the MLP reads X = h (after the attention update); in a
parallel block both read the block input x, and their drop scores and removal errors are local to the
sublayer (the other sublayer's update is not included).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from measure.capture.placement import ON_CPU, Placement, capture_placed
from measure.capture.statistics import BlockHooks, BlockStatistics, Capture
from measure.models.architecture import Architecture, Block, Sublayer, describe, sublayer_input, sublayer_output
from theory.errors import PvqError, choose
from theory.sqnr import relative_error_db

SUBLAYER_KINDS = ("attention", "mlp")


def influence(stats: Sequence[BlockStatistics]) -> np.ndarray:
    """1 − E_t[cos(x_t, y_t)] per unit: ShortGPT's BI for blocks (arXiv 2403.03853, Eq. 1) and LLM-Drop's
    drop score for attention / MLP sublayers (arXiv 2406.15786), x the residual stream entering the
    unit and y the one leaving it; NaN for a unit that saw no token (so no ordering picks it first)."""
    return np.array([1.0 - s.mean_cosine if s.tokens else math.nan for s in stats])


def removal_relative_error(stats: Sequence[BlockStatistics]) -> np.ndarray:
    """‖y − x‖² / ‖y‖² per unit (summed over tokens): the output energy lost when the unit is the identity;
    NaN for a unit that saw no token (a block without a channel mixer has no MLP unit)."""
    return np.array([s.identity_error / s.output_energy if s.tokens else math.nan for s in stats])


def removal_sqnr_db(stats: Sequence[BlockStatistics]) -> np.ndarray:
    """10·log10(‖y‖² / ‖y − x‖²) in dB per unit: the output SQNR of the unit replaced by the identity."""
    return relative_error_db(removal_relative_error(stats))


def boundary_states(result: Capture) -> list[torch.Tensor]:
    """Last-token residual states x^ℓ_T at every block boundary ℓ = 0..L, each (sequences, hidden), float64.

    x^0 is the input of block 0, x^ℓ the output of block ℓ − 1 (before the final norm for ℓ = L).
    """
    first = torch.cat(result.first_last_token)
    return [first, *(torch.cat(stats.last_token_outputs) for stats in result.blocks)]


def angular_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """E_rows[(1/π)·arccos(cos(a_r, b_r))] (Gromov et al., arXiv 2403.17887), in [0, 1]."""
    cosine = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).clamp(-1.0, 1.0)
    return float(torch.arccos(cosine).mean() / math.pi)


def angular_distances(states: Sequence[torch.Tensor], n: int) -> np.ndarray:
    """d(ℓ, n) = angular distance between x^ℓ and x^{ℓ+n} for ℓ = 0..L−n (L + 1 = len(states))."""
    blocks = len(states) - 1
    check_span(n, blocks)
    return np.array([angular_distance(states[start], states[start + n]) for start in range(blocks - n + 1)])


def angular_start(states: Sequence[torch.Tensor], n: int) -> int:
    """ℓ*(n) = argmin_ℓ d(ℓ, n): the first of the n consecutive blocks Gromov et al. drop."""
    return int(np.argmin(angular_distances(states, n)))


def angular_table(states: Sequence[torch.Tensor], max_n: int) -> pd.DataFrame:
    """Tidy d(ℓ, n) for n = 1..max_n: columns n, start, angular_distance, chosen (ℓ = ℓ*(n))."""
    rows = []
    for n in range(1, max_n + 1):
        distances = angular_distances(states, n)
        chosen = int(np.argmin(distances))
        rows += [
            {"n": n, "start": start, "angular_distance": float(d), "chosen": start == chosen}
            for start, d in enumerate(distances)
        ]
    return pd.DataFrame(rows)


def check_span(n: int, blocks: int) -> None:
    """Raise unless 1 ≤ n < blocks (a model must keep at least one block)."""
    if not (isinstance(n, int) and 1 <= n < blocks):
        raise PvqError(
            f"cannot remove {n!r} blocks from a model of {blocks}: ask for 1..{blocks - 1} (one block must stay)"
        )


def normalized_relative_importance(base_perplexity: float, removed_perplexity: float, parameters: int) -> float:
    """NRI = (PPL_without − PPL) / PPL / parameters (see the module docstring), per parameter."""
    if parameters <= 0:
        raise PvqError(f"NRI needs a positive parameter count, got {parameters}")
    return (removed_perplexity - base_perplexity) / base_perplexity / parameters


@dataclass
class SublayerStatistics:
    """Residual-stream statistics of every attention and MLP sublayer: x = X, y = X + branch (see above)."""

    attention: list[BlockStatistics]
    mlp: list[BlockStatistics]

    def of(self, kind: str) -> list[BlockStatistics]:
        """The statistics of the ``kind`` sublayers (attention or mlp), one per block."""
        choose("sublayer kind", kind, SUBLAYER_KINDS)
        return getattr(self, kind)


def branch_module(sublayer: Sublayer) -> nn.Module:
    """The module whose output is the sublayer's residual update: its output norm, else its output module."""
    return sublayer.output_norm if sublayer.output_norm is not None else sublayer.output_module


@contextlib.contextmanager
def record_sublayer_statistics(arch: Architecture) -> Iterator[SublayerStatistics]:
    """Hooks that accumulate :class:`SublayerStatistics` over every forward pass run inside the context."""
    stats = SublayerStatistics(
        attention=[BlockStatistics(block.index) for block in arch.blocks],
        mlp=[BlockStatistics(block.index) for block in arch.blocks],
    )
    handles = [handle for block in arch.blocks for handle in _sublayer_hooks(block, stats)]
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()


def _sublayer_hooks(block: Block, stats: SublayerStatistics) -> list[torch.utils.hooks.RemovableHandle]:
    """Block pre-hook keeps x; the token-mixer hook adds (x, x + a) and sets the channel mixer's residual input;
    the channel-mixer hook adds (X, X + m). A post-norm block's MLP reads the attention residual norm's output.

    Token mixers side by side (Falcon-H1) are one unit: their summed, scaled update is read off the input of
    the channel mixer's norm (h), or the block output when the block has no channel mixer. Channel mixers side
    by side (Granite-4.0-H) likewise: their update is read off the block output. A block without a channel
    mixer (Mamba2) adds no channel statistics, one without a token mixer (Nemotron-H's MLP blocks) no token-mixer
    statistics; its channel mixer reads the block input.
    """
    residual: dict[str, torch.Tensor] = {}

    def on_block(module: nn.Module, args: tuple, kwargs: dict) -> None:
        residual["block"] = residual["mlp"] = sublayer_input(args, kwargs).detach().double()

    def on_attention(module: nn.Module, args: tuple, output: object) -> None:
        x = residual["block"]
        update = sublayer_output(output).detach().double()
        stats.attention[block.index].add(x, x + update)
        residual["mlp"] = x if block.parallel else x + update

    def on_mixed(h: torch.Tensor) -> None:
        stats.attention[block.index].add(residual["block"], h.detach().double())
        residual["mlp"] = h.detach().double()

    def on_residual_norm(module: nn.Module, args: tuple, output: object) -> None:
        residual["mlp"] = sublayer_output(output).detach().double()

    def on_mlp(module: nn.Module, args: tuple, output: object) -> None:
        x = residual["mlp"]
        stats.mlp[block.index].add(x, x + sublayer_output(output).detach().double().reshape(x.shape))

    def on_block_output(module: nn.Module, args: tuple, output: object) -> None:
        y = sublayer_output(output).detach().double()
        if len(block.mixers) > 1 and not block.channel_mixers:
            on_mixed(y)
        elif len(block.channel_mixers) > 1:
            stats.mlp[block.index].add(residual["mlp"], y)

    handles = [
        block.module.register_forward_pre_hook(on_block, with_kwargs=True),
        block.module.register_forward_hook(on_block_output),
    ]
    if len(block.mixers) == 1:
        handles.append(branch_module(block.attention).register_forward_hook(on_attention))
    elif len(block.mixers) > 1 and block.channel_mixers:
        norm = block.channel_mixers[0].input_norm or block.channel_mixers[0].input_module
        handles.append(norm.register_forward_pre_hook(lambda module, args, kwargs: on_mixed(
            sublayer_input(args, kwargs)), with_kwargs=True))  # fmt: skip
    if len(block.channel_mixers) == 1:
        handles.append(branch_module(block.mlp).register_forward_hook(on_mlp))
    if block.mixers and block.mixers[0].residual_norm is not None:
        handles.append(block.mixers[0].residual_norm.register_forward_hook(on_residual_norm))
    return handles


def router_gates(output: object, experts: int, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gate weights (tokens, k) and expert indices (tokens, k) from a router's output.

    Transformers ≥ 5 routers return (logits, gate weights, indices): those are used as the model uses them.
    A plain linear router returns logits only; its gates are then softmax(logits) restricted to the top k.
    """
    if isinstance(output, tuple) and len(output) == 3:
        gates, indices = output[1].detach(), output[2].detach()
        return gates.reshape(-1, gates.shape[-1]), indices.reshape(-1, indices.shape[-1])
    logits = sublayer_output(output).detach().reshape(-1, experts)
    return torch.topk(torch.softmax(logits.double(), dim=-1), top_k, dim=-1)


@contextlib.contextmanager
def record_router_scores(arch: Architecture) -> Iterator[dict[int, np.ndarray]]:
    """Hooks that sum the router-weighted expert scores s_e = Σ_t g_{t,e} per MoE block (block index → (E,))."""
    top_k = getattr(arch.config, "num_experts_per_tok", None)
    scores: dict[int, np.ndarray] = {}
    handles = []
    for block in arch.blocks:
        if block.mlp is None:
            continue
        experts, router = block.mlp.experts, block.mlp.router
        if experts is None or router is None:
            continue
        if top_k is None:
            raise PvqError(f"{arch.model_class} has experts but its config has no num_experts_per_tok")
        scores[block.index] = np.zeros(experts.count)

        def hook(module: nn.Module, args: tuple, output: object, index: int = block.index) -> None:
            gates, indices = (t.reshape(-1).cpu() for t in router_gates(output, len(scores[index]), top_k))
            totals = torch.zeros(len(scores[index]), dtype=torch.float64)
            scores[index] += totals.index_add_(0, indices, gates.double()).numpy()

        handles.append(router.module.register_forward_hook(hook))
    try:
        yield scores
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class Importance:
    """Everything one calibration pass gives the metrics: block, sublayer and router statistics."""

    capture: Capture
    sublayers: SublayerStatistics
    expert_scores: dict[int, np.ndarray]

    @property
    def blocks(self) -> list[BlockStatistics]:
        """Block residual statistics (from the capture)."""
        return self.capture.blocks

    @property
    def states(self) -> list[torch.Tensor]:
        """Last-token residual states at the block boundaries (see :func:`boundary_states`)."""
        return boundary_states(self.capture)


def measure_importance(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    arch: Architecture | None = None,
    keep_rows: int = 0,
    placement: Placement = ON_CPU,
    block_hooks: BlockHooks | None = None,
) -> Importance:
    """One capture with the sublayer and router hooks attached: Grams, block, sublayer, router stats.

    The pass runs as ``placement`` says (:func:`measure.capture.placement.capture_placed`); ``block_hooks``
    registers further hooks on every block (they fire in either capture mode).
    """
    arch = arch or describe(model)
    with record_sublayer_statistics(arch) as sublayers, record_router_scores(arch) as experts:
        result = capture_placed(model, batches, placement, arch=arch, keep_rows=keep_rows, block_hooks=block_hooks)
    return Importance(capture=result, sublayers=sublayers, expert_scores=experts)


def importance_table(importance: Importance) -> pd.DataFrame:
    """Tidy per-unit metrics: unit (block / attention / mlp), block, influence, removal_relative_error,
    removal_sqnr_db, tokens. For blocks `influence` is BI; for sublayers it is the LLM-Drop drop score."""
    frames = []
    for unit, stats in (("block", importance.blocks), *((k, importance.sublayers.of(k)) for k in SUBLAYER_KINDS)):
        frames.append(
            pd.DataFrame(
                {
                    "unit": unit,
                    "block": [s.index for s in stats],
                    "influence": influence(stats),
                    "removal_relative_error": removal_relative_error(stats),
                    "removal_sqnr_db": removal_sqnr_db(stats),
                    "tokens": [s.tokens for s in stats],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


@dataclass(frozen=True)
class Ordering:
    """A removal rule: ``choose(importance, n, seed)`` gives the blocks whose ``unit`` (block or sublayer) goes.

    Each rule's choice for n removals is its n-th greedy step; BI, SQNR, LLM-Drop, reverse and random choices
    are nested in n, the angular rule's are not (ℓ*(n) moves with n).
    """

    name: str
    unit: str
    summary: str
    choose: Callable[[Importance, int, int], list[int]]


def _lowest(values: np.ndarray, n: int) -> list[int]:
    """Indices of the n smallest values (ties by index), sorted."""
    return sorted(int(i) for i in np.argsort(values, kind="stable")[:n])


def _angular(importance: Importance, n: int, seed: int) -> list[int]:
    start = angular_start(importance.states, n)
    return list(range(start, start + n))


def _random(importance: Importance, n: int, seed: int) -> list[int]:
    return sorted(int(i) for i in np.random.default_rng(seed).permutation(len(importance.blocks))[:n])


ORDERINGS: dict[str, Ordering] = {
    ordering.name: ordering
    for ordering in (
        Ordering("bi", "block", "ShortGPT: the n blocks of lowest Block Influence",
                 lambda imp, n, seed: _lowest(influence(imp.blocks), n)),
        Ordering("angular", "block", "Gromov et al.: n consecutive blocks from ℓ*(n) = argmin angular distance",
                 _angular),
        Ordering("sqnr", "block", "the n blocks whose identity replacement loses the least output energy",
                 lambda imp, n, seed: _lowest(removal_relative_error(imp.blocks), n)),
        Ordering("reverse", "block", "the last n blocks", lambda imp, n, seed: list(range(len(imp.blocks) - n,
                                                                                        len(imp.blocks)))),
        Ordering("random", "block", "n blocks drawn without replacement (numpy default_rng(seed))", _random),
        Ordering("attn", "attention", "LLM-Drop: the n attention sublayers of lowest drop score",
                 lambda imp, n, seed: _lowest(influence(imp.sublayers.attention), n)),
        Ordering("mlp", "mlp", "LLM-Drop: the n MLP sublayers of lowest drop score",
                 lambda imp, n, seed: _lowest(influence(imp.sublayers.mlp), n)),
    )
}  # fmt: skip
"""Every removal rule by name (``pvq remove --metric``, ``remove:<name>:<n>`` spec terms, the study)."""


def get_ordering(name: str) -> Ordering:
    """The removal rule called ``name``; PvqError listing the valid names otherwise."""
    choose("removal metric", name, ORDERINGS)
    return ORDERINGS[name]


def choose_units(name: str, importance: Importance, n: int, seed: int = 0) -> tuple[str, list[int]]:
    """(unit kind, sorted block indices) that rule ``name`` removes for n removals; PvqError for a bad n."""
    ordering = get_ordering(name)
    blocks = len(importance.blocks)
    if ordering.unit == "block":
        check_span(n, blocks)
    elif not (isinstance(n, int) and 1 <= n <= blocks):
        raise PvqError(
            f"cannot remove {n!r} {ordering.unit} sublayers from a model of {blocks} blocks: ask for 1..{blocks}"
        )
    return ordering.unit, ordering.choose(importance, n, seed)
