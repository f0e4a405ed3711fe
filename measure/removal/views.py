"""Block removal and compression measured on the same signals: the layer, block and end-to-end views.

Every number of the removal study is one of these views; removal and every compression term are measured in each
of them the same way, on the same data, with the same denominator (:data:`VIEWS`):

* **layer view** (the per-layer problem of Kuzmin et al. 2023, Sec. 4): linear layer ℓ with input Gram H_ℓ and a
  replacement Ŵ_ℓ has relative output error r_ℓ = tr(ΔW_ℓ H_ℓ ΔW_ℓᵀ) / E_ℓ, E_ℓ = tr(W_ℓ H_ℓ W_ℓᵀ) = ‖X_ℓW_ℓᵀ‖²
  (bias-free output energy, original inputs). Removing blocks S sets Ŵ_ℓ = 0 for every linear of S: r_ℓ = 1
  there, 0 elsewhere. Over the decoder, two declared aggregates:
  ``layer_energy`` Σ_ℓ r_ℓE_ℓ / Σ_ℓ E_ℓ (removal: the energy share of S's layers; massive-activation layers
  dominate it, so each layer's share is reported) and ``layer_parameters`` Σ_ℓ r_ℓP_ℓ / Σ_ℓ P_ℓ (removal: the
  parameter share of S's linears, whichever blocks go);
* **block view** (residual stream): block i run on its original input x_i with its linears compressed gives ŷ_i;
  removal gives ŷ_i = x_i. ``block``: Σ_i ‖ŷ_i − y_i‖² / Σ_i ‖y_i − x_i‖², the error over the energy of the
  blocks' residual updates (what the blocks produce; the identity path is not in the denominator), so removing
  blocks S gives Σ_S U_i / Σ U_i with U_i = ‖y_i − x_i‖²;
* **end to end** (``end_to_end``): KL of the variant's next-token distribution to the original's, nats per token,
  on the pinned evaluation windows (:class:`measure.evaluation.residual.ResidualStreamEvaluator`).

All three views are errors (smaller is better); curves and verdicts use −10·log10 of them in dB.

Every term's compressed weights are computed once per layer (on the Gram of the original model, in forked
workers), then used for all views: layer errors from the Grams, block errors by running each block on the cached
original stream, and, when asked, the whole compressed model on the evaluation windows. Two widths of one
quantizer can be spliced row by row into a model of exactly a given size (:func:`splice_rows`): rows of RTN and
GPTQ are compressed independently (one scale per row or group; GPTQ's updates stay within a row), so the splice
is the model that quantizes those rows at one width and the others at the other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import torch
from torch import nn

from measure.capture.blocks import BlockInputs, record_block_inputs, run_block
from measure.capture.statistics import Capture
from measure.compress.apply import check_finite_weight, method_weight, weights_installed
from measure.compress.methods.metrics import quadratic_trace
from measure.compress.parallel import fork_map
from measure.compress.spec import LayerStep
from measure.evaluation.perplexity import PerplexityResult
from measure.evaluation.residual import ResidualStreamEvaluator
from measure.models.architecture import Architecture, LinearRef
from theory.errors import PvqError, choose

VIEWS: dict[str, str] = {
    "layer_energy": "layer view, energy-weighted: sum over linear layers of tr(dW H dW^T) / sum of tr(W H W^T) "
                    "(bias-free layer outputs, original inputs)",
    "layer_parameters": "layer view, parameter-weighted: mean over linear layers of tr(dW H dW^T)/tr(W H W^T), "
                        "weighted by each layer's weights",
    "block": "block view: sum over blocks of ||y_hat - y||^2 on original block inputs / sum of the blocks' "
             "residual-update energy ||y - x||^2",
    "end_to_end": "end to end: KL to the original model, nats per token, on the evaluation windows",
}  # fmt: skip
"""View name → the signal its errors measure (units, numerator over denominator)."""
LOCAL_VIEWS = ("layer_energy", "layer_parameters", "block")


def check_views(views: Sequence[str]) -> tuple[str, ...]:
    """``views`` as a tuple; PvqError naming an unknown one and the choices."""
    for view in views:
        choose("view", view, VIEWS)
    if not views:
        raise PvqError(f"choose at least one view of {', '.join(VIEWS)}")
    return tuple(views)


def study_linears(arch: Architecture) -> list[LinearRef]:
    """The decoder's linear layers the views cover; PvqError for routed experts (their Grams see routed tokens
    only, so a view over them would need the routing of every compressed variant)."""
    experts = [ref.name for ref in arch.linears if ref.expert_index is not None]
    if experts:
        raise PvqError(f"the removal study covers dense decoders; this model has routed experts ({experts[0]}, "
                       "...): measure it with `pvq ledger` and `pvq eval` instead")
    return list(arch.linears)


def layer_table(refs: Sequence[LinearRef], captured: Capture) -> pd.DataFrame:
    """One row per linear: layer, block, parameters (out·in), output_energy E_ℓ = tr(W H Wᵀ) (bias-free, float64)
    and energy_share E_ℓ / Σ E."""
    rows = []
    for ref in refs:
        energy = quadratic_trace(ref.weight().detach().to("cpu", torch.float64), captured.gram_for(ref.name).gram)
        rows.append({"layer": ref.name, "block": ref.block_index, "parameters": ref.out_features * ref.in_features,
                     "output_energy": energy})  # fmt: skip
    table = pd.DataFrame(rows)
    return table.assign(energy_share=table["output_energy"] / table["output_energy"].sum())


@dataclass
class ResidualStream:
    """The original model's residual stream at every block boundary (L + 1 lists of per-batch tensors)."""

    states: list[list[torch.Tensor]]
    kwargs: list

    @classmethod
    def record(cls, model: nn.Module, arch: Architecture, batches: Sequence[torch.Tensor]) -> ResidualStream:
        inputs = record_block_inputs(model, arch, batches)
        states = [inputs.hidden]
        for block in arch.blocks:
            states.append(run_block(arch, block.index, BlockInputs(states[-1], inputs.kwargs)))
        return cls(states, inputs.kwargs)

    def block_error(self, arch: Architecture, index: int) -> float:
        """Σ ‖ŷ_i − y_i‖² of block ``index`` as the model now is, on its original inputs (float64 sums)."""
        outputs = run_block(arch, index, BlockInputs(self.states[index], self.kwargs))
        return sum(float((out - ref).pow(2).sum(dtype=torch.float64))
                   for out, ref in zip(outputs, self.states[index + 1], strict=True))  # fmt: skip

    def update_energy(self) -> np.ndarray:
        """U_i = ‖y_i − x_i‖² of every block (float64 sums)."""
        return np.array([sum(float((y - x).pow(2).sum(dtype=torch.float64)) for x, y in zip(xs, ys, strict=True))
                         for xs, ys in zip(self.states[:-1], self.states[1:], strict=False)])  # fmt: skip


def removal_errors(layers: pd.DataFrame, update_energy: np.ndarray, removed: Sequence[int]) -> dict[str, float]:
    """Local views of removing blocks ``removed`` (module docstring): layer_energy, layer_parameters, block."""
    inside = layers["block"].isin(list(removed))
    return {
        "layer_energy": float(layers.loc[inside, "output_energy"].sum() / layers["output_energy"].sum()),
        "layer_parameters": float(layers.loc[inside, "parameters"].sum() / layers["parameters"].sum()),
        "block": float(update_energy[list(removed)].sum() / update_energy.sum()),
    }


def layer_view_errors(layers: pd.DataFrame, relative: np.ndarray) -> dict[str, float]:
    """Both layer-view aggregates of per-layer relative errors ``relative`` (aligned with ``layers``):
    layer_energy Σ r_ℓE_ℓ / Σ E_ℓ and layer_parameters Σ r_ℓP_ℓ / Σ P_ℓ."""
    energy, parameters = layers["output_energy"].to_numpy(), layers["parameters"].to_numpy(float)
    return {"layer_energy": float((relative * energy).sum() / energy.sum()),
            "layer_parameters": float((relative * parameters).sum() / parameters.sum())}  # fmt: skip


def method_errors(layers: pd.DataFrame, relative: np.ndarray, block_error: np.ndarray, update_energy: np.ndarray
                  ) -> dict[str, float]:  # fmt: skip
    """Local views of a compression with per-layer relative errors ``relative`` (aligned with ``layers``) and
    per-block errors ‖ŷ_i − y_i‖² ``block_error``."""
    return {**layer_view_errors(layers, relative), "block": float(block_error.sum() / update_energy.sum())}


def _compress_layer(item: tuple[LinearRef, float], step: LayerStep, captured: Capture
                    ) -> tuple[torch.Tensor, float]:  # fmt: skip
    """(Ŵ, relative output error tr(ΔW H ΔWᵀ) / E) of one layer under ``step`` on the original Gram, ``item`` the
    layer and its output energy E = tr(W H Wᵀ) (float64). The error's product runs in float32: its rounding is
    relative to ΔW's own scale, about 1e-6 of the error, far below every difference the study reads."""
    ref, energy = item
    weight = method_weight(ref)
    gram = captured.gram_for(ref.name).gram
    weight_hat = step.method.apply(weight, gram if step.method.needs_gram else None, step.params)
    return weight_hat, max(quadratic_trace(weight_hat.float() - weight.float(), gram.float()), 0.0) / energy


def splice_rows(low: torch.Tensor, high: torch.Tensor, rows: int) -> torch.Tensor:
    """The first ``rows`` rows of ``high`` over the rest of ``low``."""
    spliced = low.clone()
    spliced[:rows] = high[:rows]
    return spliced


@dataclass
class TermWeights:
    """A compression term's weights for every covered linear (in the order of the meter's refs), with their
    per-layer relative output errors."""

    weights: list[torch.Tensor]
    relative: np.ndarray


class ViewMeter:
    """Measures removal and compression terms in every view on one model (module docstring)."""

    def __init__(self, arch: Architecture, captured: Capture, stream: ResidualStream, workers: int | None = None
                 ) -> None:  # fmt: skip
        self.arch, self.captured, self.stream, self.workers = arch, captured, stream, workers
        self.refs = study_linears(arch)
        for ref in self.refs:
            check_finite_weight(ref)
        self.layers = layer_table(self.refs, captured)
        self.update_energy = stream.update_energy()

    def compress(self, step: LayerStep) -> TermWeights:
        """Every covered layer compressed by ``step`` (forked workers), with its relative output error."""
        items = list(zip(self.refs, self.layers["output_energy"], strict=True))
        results = fork_map(partial(_compress_layer, step=step, captured=self.captured), items, self.workers)
        return TermWeights([w for w, _ in results], np.array([e for _, e in results]))

    @contextlib.contextmanager
    def installed(self, weights: Sequence[torch.Tensor], blocks: Sequence[int] | None = None) -> Iterator[None]:
        """Inside the context the covered layers (of ``blocks`` only, when given) hold ``weights``."""
        chosen = [(ref, w) for ref, w in zip(self.refs, weights, strict=True)
                  if blocks is None or ref.block_index in blocks]  # fmt: skip
        with weights_installed(chosen):
            yield

    def local_errors(self, term: TermWeights) -> dict[str, float]:
        """The term's layer- and block-view errors (blocks run one at a time on the original stream)."""
        block_error = np.zeros(len(self.arch.blocks))
        for block in self.arch.blocks:
            with self.installed(term.weights, [block.index]):
                block_error[block.index] = self.stream.block_error(self.arch, block.index)
        return method_errors(self.layers, term.relative, block_error, self.update_energy)

    def evaluate(self, weights: Sequence[torch.Tensor], evaluator: ResidualStreamEvaluator) -> PerplexityResult:
        """The whole model with ``weights`` installed, scored by ``evaluator.evaluate(start=0)``."""
        with self.installed(weights):
            return evaluator.evaluate(start=0)
