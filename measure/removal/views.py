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

**Held-out data, sinks out** (:class:`ScoringData`). A method is fitted on the calibration Grams (GPTQ's Hessian,
SparseGPT's, the output score of width pruning), so the local views are *scored* on held-out tokens: Grams and the
block view's stream from the evaluation windows. The first :data:`SINK_POSITIONS` position of every window (the
BOS token where the model's tokenizer puts one first, else the first text token) is an attention sink with massive
activations (Sun et al., arXiv 2402.17762; Xiao et al., arXiv 2309.17453): on SmolLM2 it held 71 % of the blocks'
update energy, so the headline views leave it out. Robustness variants (:data:`LOCAL_VARIANT_COLUMNS`): all
positions, the in-sample value (scored on the calibration data the method was fitted on: its optimism shows), and
for the block view the per-token normalised error (the mean over tokens of each token's relative error). The share
of each view's denominator held by the sink positions and by the top 1 % of positions is in
:meth:`ViewMeter.denominator_shares`.

Every term's compressed weights are computed once per layer (on the Gram of the original model, in forked
workers), then used for all views: layer errors from the Grams, block errors by running each block on the cached
original stream, and, when asked, the whole compressed model on the evaluation windows. Two widths of one
quantizer can be spliced row by row into a model of exactly a given size (:func:`splice_rows`): rows of RTN and
GPTQ are compressed independently (one scale per row or group; GPTQ's updates stay within a row), so the splice
is the model that quantizes those rows at one width and the others at the other.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from measure.capture.blocks import BlockInputs, record_block_inputs, run_block
from measure.capture.statistics import Capture
from measure.compress.apply import check_finite_weight, weights_installed
from measure.compress.layer import compress_layer, method_weight
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
SINK_POSITIONS = 1
"""Leading positions of every window left out of the headline local views (module docstring)."""
VARIANTS = ("all_positions", "in_sample", "per_token")
"""Robustness variants of the local views (module docstring); ``per_token`` exists for the block view only."""
LOCAL_VARIANT_COLUMNS = [f"error_{variant}" for variant in VARIANTS]
"""Point / level columns of the variants (NaN where a view has no such variant, and end to end)."""


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


def layer_table(refs: Sequence[LinearRef], scoring: ScoringData) -> pd.DataFrame:
    """One row per linear: layer, block, parameters (out·in), output_energy E_ℓ = tr(W H Wᵀ) on the headline
    held-out Gram (bias-free, float64), energy_share E_ℓ / Σ E, and the energies of the variants
    (``output_energy_all_positions``, ``output_energy_in_sample``)."""
    rows = []
    for ref in refs:
        weight = ref.weight().detach().to("cpu", torch.float32)
        energies = scoring.row_errors(ref.name, weight).sum(axis=0)
        rows.append({"layer": ref.name, "block": ref.block_index, "parameters": ref.out_features * ref.in_features,
                     "output_energy": energies[0], "output_energy_all_positions": energies[1],
                     "output_energy_in_sample": energies[2]})  # fmt: skip
    table = pd.DataFrame(rows)
    return table.assign(energy_share=table["output_energy"] / table["output_energy"].sum())


@dataclass
class ScoringData:
    """Where the local views are scored (module docstring): per linear layer the headline held-out Gram (sink
    positions left out), the sink positions' input rows (``sinks``: a capture keeping them, ``keep_rows``) and the
    calibration (in-sample) Gram; the held-out and the calibration residual streams; and the number of sink
    positions per window. :meth:`row_errors` gives a weight change's output error per row on each."""

    held_out: Capture
    sinks: Capture | None
    calibration: Capture
    stream: ResidualStream
    calibration_stream: ResidualStream
    sink_positions: int
    prepared: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = field(default_factory=dict)

    def scoring_inputs(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(headline Gram, in-sample Gram, sink input rows (n, in) or None) of linear ``name``, float32, assembled
        once per shared input (call :meth:`prepare` before forking workers so that they share them). A held-out
        Gram apart from the calibration one is read only here, so its float64 panels are released once its float32
        copy exists: on Qwen2.5-0.5B (MLP inputs of 4,864 features) that is about 3 GB."""
        group = self.held_out.group_of[name]
        if group not in self.prepared:
            same = self.calibration is self.held_out
            held_out = self.held_out.grams[group]
            headline = held_out.gram.float()
            if not same:
                held_out.release()
            in_sample = headline if same else self.calibration.grams[group].gram.float()
            rows = None if self.sinks is None else self.sinks.grams[group].sample
            self.prepared[group] = (headline, in_sample, None if rows is None else rows.float())
        return self.prepared[group]

    def prepare(self, names: Sequence[str]) -> None:
        """Assemble the scoring inputs of every linear in ``names`` now."""
        for name in names:
            self.scoring_inputs(name)

    def row_errors(self, name: str, change: torch.Tensor) -> np.ndarray:
        """Per output row r of ``change`` (ΔW, or W for the output energy): δ_r H δ_rᵀ on the headline Gram, the
        same plus Σ_sinks (δ_r·x_s)² (all positions), and δ_r C δ_rᵀ on the calibration Gram; (rows, 3) float64.
        Rows add: a layer's error is the sum of its rows', so a row splice's error is exact from its rows. The
        products run in float32: their rounding is relative to ΔW's own scale, about 1e-6 of the error, far
        below every difference the study reads."""
        headline, in_sample, sinks = self.scoring_inputs(name)
        change = change.to("cpu", torch.float32)
        first = ((change @ headline) * change).sum(dim=1).double()
        third = first if in_sample is headline else ((change @ in_sample) * change).sum(dim=1).double()
        extra = torch.zeros_like(first) if sinks is None else (sinks @ change.T).double().pow(2).sum(dim=0)
        return torch.stack([first, first + extra, third], dim=1).clamp(min=0).numpy()

    @classmethod
    def in_sample(cls, captured: Capture, stream: ResidualStream) -> ScoringData:
        """Scoring on the calibration data itself, all positions (every variant equals the headline)."""
        return cls(captured, None, captured, stream, stream, 0)


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

    def block_error(self, arch: Architecture, index: int) -> np.ndarray:
        """‖ŷ_i,t − y_i,t‖² of block ``index`` as the model now is, on its original inputs, per token: (sequences,
        positions), float64."""
        outputs = run_block(arch, index, BlockInputs(self.states[index], self.kwargs))
        return np.concatenate([(out - ref).pow(2).sum(dim=-1, dtype=torch.float64).cpu().numpy()
                               for out, ref in zip(outputs, self.states[index + 1], strict=True)])  # fmt: skip

    def update_energy(self) -> np.ndarray:
        """U_i,t = ‖y_i,t − x_i,t‖² of every block and token: (blocks, sequences, positions), float64."""
        return np.stack([np.concatenate([(y - x).pow(2).sum(dim=-1, dtype=torch.float64).cpu().numpy()
                                         for x, y in zip(xs, ys, strict=True)])
                         for xs, ys in zip(self.states[:-1], self.states[1:], strict=False)])  # fmt: skip


def block_view(error: np.ndarray, update: np.ndarray, sinks: int) -> dict[str, float]:
    """Block-view aggregates of per-token errors ``error`` and update energies ``update`` (both (sequences,
    positions), summed over blocks): headline Σ_t>s e_t / Σ_t>s U_t without the first ``sinks`` positions,
    ``all_positions`` Σ e / Σ U, ``per_token`` the mean over non-sink tokens of e_t / U_t."""
    kept_error, kept_update = error[:, sinks:], update[:, sinks:]
    return {"block": float(kept_error.sum() / kept_update.sum()),
            "all_positions": float(error.sum() / update.sum()),
            "per_token": float(np.mean(kept_error / np.maximum(kept_update, np.finfo(float).tiny)))}  # fmt: skip


def removal_errors(layers: pd.DataFrame, update_energy: np.ndarray, removed: Sequence[int],
                   calibration_update: np.ndarray | None = None, sinks: int = 0) -> dict[str, float]:  # fmt: skip
    """Local views of removing blocks ``removed`` (module docstring): layer_energy, layer_parameters, block on the
    scoring data (``update_energy``: per block and token, (blocks, sequences, positions), or per block), and with
    ``error_<variant>`` keys the variants (:func:`removal_variants`)."""
    update = update_energy if update_energy.ndim == 3 else update_energy[:, None, None]
    inside = layers["block"].isin(list(removed))
    chosen = np.zeros(len(update), dtype=bool)
    chosen[list(removed)] = True
    block = block_view(update[chosen].sum(axis=0), update.sum(axis=0), sinks)
    errors = {
        "layer_energy": float(layers.loc[inside, "output_energy"].sum() / layers["output_energy"].sum()),
        "layer_parameters": float(layers.loc[inside, "parameters"].sum() / layers["parameters"].sum()),
        "block": block["block"],
    }
    variants = {view: {} for view in LOCAL_VIEWS}
    for column in ("all_positions", "in_sample"):
        energy = layers.get(f"output_energy_{column}", layers["output_energy"])
        variants["layer_energy"][column] = float(energy[inside].sum() / energy.sum())
        variants["layer_parameters"][column] = errors["layer_parameters"]
    variants["block"] = {"all_positions": block["all_positions"], "per_token": block["per_token"]}
    if calibration_update is not None:
        calibration = calibration_update if calibration_update.ndim == 3 else calibration_update[:, None, None]
        variants["block"]["in_sample"] = float(calibration[chosen].sum() / calibration.sum())
    return {**errors, "variants": variants}  # type: ignore[dict-item]


def layer_view_errors(layers: pd.DataFrame, relative: np.ndarray) -> dict[str, float]:
    """Both layer-view aggregates of per-layer relative errors ``relative`` (aligned with ``layers``):
    layer_energy Σ r_ℓE_ℓ / Σ E_ℓ and layer_parameters Σ r_ℓP_ℓ / Σ P_ℓ."""
    energy, parameters = layers["output_energy"].to_numpy(), layers["parameters"].to_numpy(float)
    return {"layer_energy": float((relative * energy).sum() / energy.sum()),
            "layer_parameters": float((relative * parameters).sum() / parameters.sum())}  # fmt: skip


def method_errors(layers: pd.DataFrame, relative: np.ndarray, block_error: np.ndarray, update_energy: np.ndarray,
                  sinks: int = 0, calibration: tuple[np.ndarray, np.ndarray] | None = None
                  ) -> dict[str, Any]:  # fmt: skip
    """Local views of a compression with per-layer relative errors ``relative`` ((layers,) on the headline data,
    or (layers, 3): headline, all positions, in sample; aligned with ``layers``) and per-token block errors
    ``block_error`` (sequences, positions; summed over blocks) against ``update_energy`` (blocks, sequences,
    positions); ``calibration``: the same two on the calibration stream (the block view's in-sample variant).
    Returns the views and, under ``variants``, each view's variants."""
    relative = relative if relative.ndim == 2 else relative[:, None].repeat(3, axis=1)
    update = update_energy if update_energy.ndim == 3 else update_energy[:, None, None]
    block_error = block_error if block_error.ndim == 2 else np.asarray(block_error).reshape(1, -1)
    errors = layer_view_errors(layers, relative[:, 0])
    block = block_view(block_error, update.sum(axis=0), sinks)
    variants: dict[str, dict[str, float]] = {"layer_energy": {}, "layer_parameters": {}, "block": {}}
    for k, column in ((1, "all_positions"), (2, "in_sample")):
        energy = layers.get(f"output_energy_{column}", layers["output_energy"])
        variant = layer_view_errors(layers.assign(output_energy=energy), relative[:, k])
        variants["layer_energy"][column] = variant["layer_energy"]
        variants["layer_parameters"][column] = variant["layer_parameters"]
    variants["block"] = {"all_positions": block["all_positions"], "per_token": block["per_token"]}
    if calibration is not None:
        variants["block"]["in_sample"] = float(calibration[0].sum() / calibration[1].sum())
    return {**errors, "block": block["block"], "variants": variants}


def _compress_layer(ref: LinearRef, step: LayerStep, captured: Capture, scoring: ScoringData
                    ) -> tuple[torch.Tensor, np.ndarray]:  # fmt: skip
    """(Ŵ, per-row output errors (rows, 3)) of one layer under ``step`` fitted on the calibration Gram
    ``captured``, scored on ``scoring`` (:meth:`ScoringData.row_errors`)."""
    compressed = compress_layer(method_weight(ref), step, captured.gram_for(ref.name).gram)
    change = compressed.weight_hat.float() - compressed.weight.float()
    return compressed.weight_hat, scoring.row_errors(ref.name, change)


def splice_rows(low: torch.Tensor, high: torch.Tensor, rows: int) -> torch.Tensor:
    """The first ``rows`` rows of ``high`` over the rest of ``low``."""
    spliced = low.clone()
    spliced[:rows] = high[:rows]
    return spliced


@dataclass
class TermWeights:
    """A compression term's weights for every covered linear (in the order of the meter's refs), their output
    errors per row (``rows``: per layer (rows, 3), :meth:`ScoringData.row_errors`) and relative output errors
    (``relative``: (layers, 3), on the headline held-out data, all positions, in sample)."""

    weights: list[torch.Tensor]
    relative: np.ndarray
    rows: list[np.ndarray] = field(default_factory=list)


ENERGY_COLUMNS = ["output_energy", "output_energy_all_positions", "output_energy_in_sample"]


class ViewMeter:
    """Measures removal and compression terms in every view on one model (module docstring): methods are fitted on
    ``captured`` (the calibration Grams) and scored on ``scoring`` (default: the calibration data itself)."""

    def __init__(self, arch: Architecture, captured: Capture, stream: ResidualStream, workers: int | None = None,
                 scoring: ScoringData | None = None) -> None:  # fmt: skip
        self.arch, self.captured, self.workers = arch, captured, workers
        self.scoring = scoring or ScoringData.in_sample(captured, stream)
        self.stream = self.scoring.stream
        self.refs = study_linears(arch)
        for ref in self.refs:
            check_finite_weight(ref)
        self.scoring.prepare([ref.name for ref in self.refs])
        self.layers = layer_table(self.refs, self.scoring)
        self.update_energy = self.stream.update_energy()
        self.calibration_update = self.scoring.calibration_stream.update_energy()

    def term(self, weights: list[torch.Tensor], rows: list[np.ndarray]) -> TermWeights:
        """The term of ``weights`` with per-row errors ``rows``: its relative errors are the rows' sums over the
        layers' output energies (headline, all positions, in sample)."""
        energies = self.layers[ENERGY_COLUMNS].to_numpy()
        relative = np.stack([row.sum(axis=0) for row in rows]) / np.where(energies > 0, energies, 1.0)
        return TermWeights(weights, relative, rows)

    def row_errors(self, index: int, weight_hat: torch.Tensor) -> np.ndarray:
        """Per-row output errors of replacing layer ``index``'s weight by ``weight_hat``."""
        ref = self.refs[index]
        return self.scoring.row_errors(ref.name, weight_hat.float() - ref.weight().detach().float())

    def compress(self, step: LayerStep) -> TermWeights:
        """Every covered layer compressed by ``step`` (forked workers), with its output errors."""
        results = fork_map(partial(_compress_layer, step=step, captured=self.captured, scoring=self.scoring),
                           self.refs, self.workers)  # fmt: skip
        return self.term([w for w, _ in results], [e for _, e in results])

    @contextlib.contextmanager
    def installed(self, weights: Sequence[torch.Tensor], blocks: Sequence[int] | None = None) -> Iterator[None]:
        """Inside the context the covered layers (of ``blocks`` only, when given) hold ``weights``."""
        chosen = [(ref, w) for ref, w in zip(self.refs, weights, strict=True)
                  if blocks is None or ref.block_index in blocks]  # fmt: skip
        with weights_installed(chosen):
            yield

    def local_errors(self, term: TermWeights) -> dict[str, Any]:
        """The term's layer- and block-view errors (blocks run one at a time on the held-out and the calibration
        streams), with their variants under ``variants``."""
        error = np.zeros_like(self.update_energy[0])
        calibration = self.scoring.calibration_stream is not self.stream
        in_sample = 0.0
        for block in self.arch.blocks:
            with self.installed(term.weights, [block.index]):
                error += self.stream.block_error(self.arch, block.index)
                if calibration:
                    in_sample += float(self.scoring.calibration_stream.block_error(self.arch, block.index).sum())
        sample = (np.array(in_sample if calibration else error.sum()),
                  self.calibration_update if calibration else self.update_energy)
        return method_errors(self.layers, term.relative, error, self.update_energy, self.scoring.sink_positions,
                             sample)  # fmt: skip

    def removal_errors(self, removed: Sequence[int]) -> dict[str, Any]:
        """Local views of removing blocks ``removed`` with their variants (:func:`removal_errors`)."""
        return removal_errors(self.layers, self.update_energy, removed, self.calibration_update,
                              self.scoring.sink_positions)  # fmt: skip

    def denominator_shares(self) -> pd.DataFrame:
        """Per local view: the share of its denominator held by the sink positions and by the top 1 % of positions
        (block view; the layer views' per-position energies are not kept, only the sink share), on the held-out
        data, all positions."""
        update = self.update_energy.sum(axis=0).ravel()
        top = max(1, int(np.ceil(0.01 * update.size)))
        sinks = self.update_energy.sum(axis=0)[:, : self.scoring.sink_positions].sum()
        layer_sink = 1 - self.layers["output_energy"].sum() / self.layers["output_energy_all_positions"].sum()
        return pd.DataFrame([
            {"view": "layer_energy", "sink_share": float(layer_sink), "top_1pct_share": math.nan},
            {"view": "block", "sink_share": float(sinks / update.sum()),
             "top_1pct_share": float(np.sort(update)[-top:].sum() / update.sum())},
        ])  # fmt: skip

    def evaluate(self, weights: Sequence[torch.Tensor], evaluator: ResidualStreamEvaluator) -> PerplexityResult:
        """The whole model with ``weights`` installed, scored by ``evaluator.evaluate(start=0)``."""
        with self.installed(weights):
            return evaluator.evaluate(start=0)
