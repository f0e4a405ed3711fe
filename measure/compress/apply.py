"""Apply a compression spec (:mod:`measure.compress.spec`) to a model, and count its size.

:func:`apply_spec` runs the terms in order. Consecutive layer terms are one GPTQ-style layer-sequential pass
(Frantar et al. 2022, arXiv 2210.17323, Sec. 4): for each block, capture the Grams H = XᵀX of its layers'
inputs, compress its layers, then push the calibration batches through the block to get the next block's
inputs. The calibration stream (:data:`measure.compress.spec.CALIBRATION_STREAMS`): ``calibration="sequential"``
captures on the compressed model's stream (every block sees the errors of the blocks before it); ``"parallel"`` on
the original model's stream. The choice is recorded in the report. (Where the blocks of a capture run, the
capture mode, is a separate matter: :class:`measure.capture.placement.Placement`.)
:func:`model_size` counts every parameter at 16 bits except compressed layer weights, which cost their
method's bits per weight (:mod:`theory.accounting`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pandas as pd
import torch
from torch import nn

from measure.capture.blocks import BlockInputs, record_block_inputs, run_block
from measure.capture.experts import ExpertCapture
from measure.capture.gram import GramAccumulator
from measure.capture.statistics import Capture, register_gram_hooks
from measure.compress.layer import compress_layer, method_weight
from measure.compress.methods.metrics import LayerErrorMeter
from measure.compress.parallel import fork_map
from measure.compress.spec import CALIBRATION_STREAMS, LayerStep, ModelStep, Spec, parse_spec
from measure.models.architecture import Architecture, Block, LinearRef, describe
from theory.accounting import BASE_BITS, PAPER_CONVENTION, Convention
from theory.errors import PvqError, choose


@dataclass
class CompressionReport:
    """What :func:`apply_spec` did: one row per compressed layer, the model size, and the calibration stream.

    ``layers`` columns: layer, block, sublayer, role, expert, term, method, parameters (out·in), bits_per_weight,
    tokens (calibration tokens in the layer's Gram, 0 for data-free passes), relative_error
    (tr(ΔW H ΔWᵀ)/tr(W H Wᵀ) on the Gram the method used; NaN without one), sqnr_db.
    """

    spec: str
    calibration: str
    layers: pd.DataFrame
    size: dict[str, float]
    model_steps: list[dict[str, Any]]
    experts_without_tokens: list[str]
    tokens: int
    seconds: float

    def provenance(self) -> dict[str, Any]:
        """The fields a result derived from the compressed model records."""
        return {
            "spec": self.spec,
            "calibration": self.calibration,
            "calibration_tokens": self.tokens,
            "size": self.size,
            "model_steps": self.model_steps,
            "experts_without_tokens": self.experts_without_tokens,
            "compression_seconds": self.seconds,
        }


def apply_spec(
    model: nn.Module,
    spec: Spec | str,
    batches: Sequence[torch.Tensor] | None = None,
    calibration: str = "sequential",
    device: str = "cpu",
    expert_route: str = "routed",
    captured: Capture | None = None,
    workers: int | None = 1,
) -> CompressionReport:
    """Compress ``model`` in place as ``spec`` says (see the module docstring for the order of work).

    ``batches`` (token ids, one tensor per batch) are needed when a method reads Grams; ``expert_route`` picks
    which tokens experts' Grams see (:mod:`measure.capture.experts`). Weights are checked for NaN/Inf before a pass
    starts; an error raised during a pass (an expert without tokens) leaves the earlier blocks compressed.

    ``captured``: Grams of the *unmodified* model on the same ``batches`` (e.g. a ledger's capture). With
    ``calibration="parallel"`` the first layer pass reads them instead of running the model again (the Grams
    it would capture are the same: original inputs); later passes, passes after a model step (``remove``) and
    passes over routed experts capture as usual. ``workers``: forked single-threaded processes sharing the layers
    of such a pass on ``captured`` Grams (None: one per core; the layers are independent there, and GPTQ's and
    SparseGPT's column sweeps run no faster with more threads; :func:`measure.compress.parallel.fork_map`).
    """
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    choose("calibration", calibration, CALIBRATION_STREAMS)
    check_layers_exist(spec, model)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    model_steps: list[dict[str, Any]] = []
    empty: list[str] = []
    tokens = 0
    for stage in spec.stages():
        if isinstance(stage, ModelStep):
            fields = stage.kind.apply(model, stage.params, batches or [], device)
            model_steps.append({"term": stage.text, **fields})
            captured = None
            continue
        layer_pass = _LayerPass(describe(model), stage, calibration, device, expert_route, workers)
        rows += layer_pass.run(batches, captured if calibration == "parallel" else None)
        captured = None
        empty += layer_pass.experts_without_tokens
        tokens = max(tokens, layer_pass.tokens)
    return CompressionReport(
        spec=spec.text,
        calibration=calibration,
        layers=pd.DataFrame(rows, columns=REPORT_COLUMNS).astype({"expert": "Int64"}),
        size=model_size(model, spec),
        model_steps=model_steps,
        experts_without_tokens=empty,
        tokens=tokens,
        seconds=time.perf_counter() - start,
    )


REPORT_COLUMNS = [
    "layer", "block", "sublayer", "role", "expert", "term", "method", "parameters", "bits_per_weight", "tokens",
    "relative_error", "sqnr_db",
]  # fmt: skip


@dataclass
class _LayerPass:
    """One layer-sequential pass of consecutive layer steps over every block."""

    arch: Architecture
    steps: tuple[LayerStep, ...]
    stream: str
    device: str
    expert_route: str
    workers: int | None = 1
    tokens: int = 0
    experts_without_tokens: list[str] = field(default_factory=list)

    def targets(self, block: Block) -> list[tuple[LinearRef, LayerStep]]:
        found = [(ref, next((s for s in self.steps if s.covers(ref)), None)) for ref in block.linears]
        return [(ref, step) for ref, step in found if step is not None]

    def run(self, batches: Sequence[torch.Tensor] | None, captured: Capture | None = None) -> list[dict[str, Any]]:
        targets = [self.targets(block) for block in self.arch.blocks]
        flat = [pair for block_targets in targets for pair in block_targets]
        for ref, _ in flat:
            check_finite_weight(ref)
        if not any(step.method.needs_gram for _, step in flat):
            return [self.compress(ref, step, None, None) for ref, step in flat]
        if not batches:
            names = sorted({step.text for step in self.steps if step.method.needs_gram})
            raise PvqError(f"spec terms {names} need calibration data; pass calibration batches")
        self.tokens = sum(batch.numel() for batch in batches)
        if captured is not None and all(ref.expert_index is None for ref, _ in flat):
            captured.check_reusable([ref for ref, _ in flat], self.tokens)
            results = fork_map(partial(layer_report, grams=captured.grams, experts=None), flat, self.workers)
            for (ref, _), (weight_hat, _) in zip(flat, results, strict=True):
                ref.set_weight(weight_hat)
            return [row for _, row in results]
        inputs = record_block_inputs(self.arch.model, self.arch, batches)
        rows = []
        for block, block_targets in zip(self.arch.blocks, targets, strict=True):
            grams: dict[str, GramAccumulator] = {}
            experts = ExpertCapture(self.expert_route)
            handles = (register_gram_hooks(block, grams, 0) + experts.hooks(block)) if block_targets else []
            try:
                outputs = run_block(self.arch, block.index, inputs, device=self.device)
            finally:
                for handle in handles:
                    handle.remove()
            self.experts_without_tokens += experts.empty_experts()
            rows += [self.compress(ref, step, grams, experts) for ref, step in block_targets]
            last = block.index == len(self.arch.blocks) - 1
            if self.stream == "sequential" and block_targets and not last:
                outputs = run_block(self.arch, block.index, inputs, device=self.device)
            inputs = BlockInputs(hidden=outputs, kwargs=inputs.kwargs)
        return rows

    def compress(
        self,
        ref: LinearRef,
        step: LayerStep,
        grams: dict[str, GramAccumulator] | None,
        experts: ExpertCapture | None,
    ) -> dict[str, Any]:
        weight_hat, row = layer_report((ref, step), grams, experts)
        ref.set_weight(weight_hat)
        return row


def layer_report(
    target: tuple[LinearRef, LayerStep],
    grams: Mapping[str, GramAccumulator] | None,
    experts: ExpertCapture | None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """(Ŵ, report row) of one layer compressed by its step on its input Gram; the model is not changed."""
    ref, step = target
    gram = None if grams is None else layer_gram(ref, grams, experts, step.wants_router_weighted_gram())
    if gram is not None and step.method.needs_gram and gram.tokens == 0:
        raise PvqError(
            f"no calibration token was routed to {ref.name}, so {step.text!r} has no statistics for it; "
            "use expert_route='all' (every expert sees every token) or more calibration data"
        )
    weight = method_weight(ref)
    matrix = None if gram is None or gram.tokens == 0 else gram.gram
    meter = None if matrix is None else LayerErrorMeter(weight, matrix)
    compressed = compress_layer(weight, step, matrix, meter)
    return compressed.weight_hat, {
        "layer": ref.name,
        "block": ref.block_index,
        "sublayer": ref.sublayer_kind,
        "role": ref.role,
        "expert": ref.expert_index,
        "term": step.text,
        "method": step.method.name,
        "parameters": ref.out_features * ref.in_features,
        "bits_per_weight": step.bits_per_weight(ref),
        "tokens": 0 if gram is None else gram.tokens,
        "relative_error": compressed.relative_error,
        "sqnr_db": compressed.sqnr_db,
    }


def layer_gram(
    ref: LinearRef, grams: Mapping[str, GramAccumulator], experts: ExpertCapture, weighted: bool = False
) -> GramAccumulator | None:
    """The Gram of ``ref``'s input: its shared input's (from ``grams``) or its expert's (routed / weighted)."""
    if ref.expert_index is not None:
        return experts.gram_for(ref, weighted=weighted)
    return grams.get(ref.shared_input_group)


def check_finite_weight(ref: LinearRef) -> None:
    """Raise a PvqError naming ``ref`` when its weight holds NaN or Inf."""
    if not torch.isfinite(ref.weight()).all():
        raise PvqError(f"layer {ref.name} has NaN or Inf weights; load an intact checkpoint before compressing it")


def model_size(model: nn.Module, spec: Spec | str, convention: Convention = PAPER_CONVENTION) -> dict[str, float]:
    """Storage of ``model`` compressed by ``spec``: every parameter at 16 bits except compressed layer weights
    (pruning masks charged by ``convention``, free by default).

    bits = 16·(P − Σ_c out_c·in_c) + Σ_c bpw_c·out_c·in_c over compressed layers c (P = distinct parameters, a
    tied lm_head counted once; embeddings, lm_head, norms and biases stay at 16 bits); bytes = bits / 8.
    Keys: parameters, bits, bytes, bits_per_weight (bits / P), compressed_weights,
    compressed_bits_per_weight, linear_weights, linear_bits_per_weight (over every block linear weight).
    """
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    arch = describe(model)
    parameters = sum(p.numel() for p in model.parameters())
    compressed_weights = 0
    compressed_bits = 0.0
    for ref in arch.linears:
        step = spec.step_for(ref)
        if step is not None:
            compressed_weights += ref.out_features * ref.in_features
            compressed_bits += step.bits_per_weight(ref, convention) * ref.out_features * ref.in_features
    linear_weights = sum(ref.out_features * ref.in_features for ref in arch.linears)
    bits = BASE_BITS * (parameters - compressed_weights) + compressed_bits
    return {
        "parameters": parameters,
        "bits": bits,
        "bytes": bits / 8,
        "bits_per_weight": bits / parameters,
        "compressed_weights": compressed_weights,
        "compressed_bits_per_weight": compressed_bits / compressed_weights if compressed_weights else math.nan,
        "linear_weights": linear_weights,
        "linear_bits_per_weight": (BASE_BITS * (linear_weights - compressed_weights) + compressed_bits)
        / linear_weights,
    }


def _own_parameter(ref: LinearRef) -> nn.Parameter | None:
    """The Parameter that stores ``ref``'s weight as (out_features, in_features) itself (an ``nn.Linear``), or
    None for any other layout (transposed Conv1D, fused or stacked experts, which set_weight copies)."""
    parameter = None if ref.stacked else getattr(ref.module, "weight", None)
    if not isinstance(parameter, nn.Parameter):
        return None
    view = ref.weight()
    same = view.data_ptr() == parameter.data_ptr() and view.shape == parameter.shape
    return parameter if same and view.stride() == parameter.stride() else None


@contextlib.contextmanager
def weights_installed(pairs: Sequence[tuple[LinearRef, torch.Tensor]]) -> Iterator[None]:
    """Inside the context each layer of ``pairs`` holds its given weight (e.g. one a ledger kept); the original
    weights are restored after, whatever happens.

    A layer whose Parameter is its (out, in) weight itself gets the given tensor swapped in (no copy: writing into
    that layer's weight inside the context writes into the given tensor) and its own storage swapped back after;
    other layouts are copied in and out. Copying every linear of a 135M model in and out cost about 3 s per
    evaluation on 2 cores (page faults of fresh 400 MB buffers), as much as a quarter of the evaluation."""
    swapped: list[tuple[nn.Parameter, torch.Tensor]] = []
    copied: list[tuple[LinearRef, torch.Tensor]] = []
    try:
        for ref, weight in pairs:
            parameter = _own_parameter(ref)
            if parameter is None:
                copied.append((ref, ref.weight().detach().clone()))
                ref.set_weight(weight)
                continue
            ref.check_shape(weight)
            swapped.append((parameter, parameter.data))
            parameter.data = weight.detach().to(dtype=parameter.dtype, device=parameter.device).contiguous()
        yield
    finally:
        for parameter, data in reversed(swapped):
            parameter.data = data
        for ref, weight in reversed(copied):
            ref.set_weight(weight)


def check_layers_exist(spec: Spec, model: nn.Module) -> None:
    """PvqError naming every ``@layer=`` term before the spec's first model step (``remove``, ``shrink``) whose
    layer ``model`` lacks: those terms name the layers of the model as given (later ones, the model the step
    leaves)."""
    names = {ref.name for ref in describe(model).linears}
    first_model_step = next((i for i, s in enumerate(spec.steps) if isinstance(s, ModelStep)), len(spec.steps))
    missing = [step.layer for step in spec.steps[:first_model_step]
               if isinstance(step, LayerStep) and step.layer is not None and step.layer not in names]  # fmt: skip
    if missing:
        examples = ", ".join(sorted(names)[:2])
        raise PvqError(
            f"the spec names {len(missing)} layer(s) the model lacks: {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''}; layers of this model look like {examples} "
            "(see `pvq info MODEL --linears`)"
        )
