"""Compression specs: one string says how to compress a whole model; one parser reads it, one function applies it.

Grammar::

    spec := term ("+" term)*
    term := head (":" token)* ("@" scope)?

* ``head`` is a compression method of :mod:`measure.compress.methods` (``magnitude``, ``wanda``, ``sparsegpt``, ``rtn``,
  ``gptq``, ``nf4``, ``mxfp4``, ...) or a model-level term kind of :data:`TERM_KINDS` (layer removal adds
  ``remove``).
* Tokens set the method's parameters (:mod:`measure.compress.methods.params`): by position (``gptq:4`` → bits 4), by
  prefix (``g128`` → group 128), by flag word (``channel``, ``asym``, ``mse``), as ``name=value``, and for
  pruners as an N:M pair (``sparsegpt:2:4`` → nm 2:4).
* ``scope`` picks the linear layers of every block by sublayer kind (:data:`SCOPES`); without one a term
  covers attention, MLP and expert layers, and routers stay at 16 bits. ``@layer=NAME`` picks the one linear
  layer called NAME (a per-layer allocation, :mod:`measure.mixture`, is a spec of such terms); per-layer terms
  are not mixed with sublayer scopes, and a layer the model lacks is an error before anything is compressed.
* A pruning term directly followed by a quantization term is one joint method when the pruning term carries no
  other scope (it takes the quantization term's): prune, then quantize the kept weights (Kuzmin et al. 2023,
  arXiv 2307.02973, Sec. 5), e.g. ``sparsegpt:0.5+gptq:4:g128``. Otherwise every layer belongs to at most one term.

:func:`apply_spec` runs the terms in order. Consecutive layer terms are one GPTQ-style layer-sequential pass
(Frantar et al. 2022, arXiv 2210.17323, Sec. 4): for each block, capture the Grams H = XᵀX of its layers'
inputs, compress its layers, then push the calibration batches through the block to get the next block's
inputs. ``calibration="sequential"`` captures on the compressed model's stream (every block sees the errors of
the blocks before it); ``"parallel"`` on the original model's stream. The choice is recorded in the report.
:func:`model_size` counts every parameter at 16 bits except compressed layer weights, which cost their
method's bits per weight (:mod:`theory.accounting`).
"""

from __future__ import annotations

import importlib
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import nn

from measure.models.architecture import Architecture, Block, LinearRef, describe
from measure.capture.blocks import BlockInputs, record_block_inputs, run_block
from measure.capture.statistics import Capture, register_gram_hooks
from measure.capture.gram import GramAccumulator
from measure.compress.methods import REGISTRY, get_method
from measure.compress.methods.metrics import output_error
from measure.compress.methods.method import Method
from measure.capture.experts import ROUTER_WEIGHTED_METHODS, ExpertCapture
from theory.accounting import BASE_BITS
from theory.errors import PvqError

CALIBRATIONS = ("sequential", "parallel")
SCOPES: dict[str, frozenset[str]] = {
    "all": frozenset({"attention", "mlp", "expert"}),
    "attention": frozenset({"attention"}),
    "mlp": frozenset({"mlp", "expert"}),
    "expert": frozenset({"expert"}),
    "router": frozenset({"router"}),
}
"""Scope name -> the ``LinearRef.sublayer_kind`` values it covers (``mlp`` includes shared and routed experts)."""
DEFAULT_SCOPE = "all"
TERM_KINDS: dict[str, str] = {"remove": "measure.compress.remove:REMOVE_TERM"}
"""Model-level term kinds: head -> ``"module:attribute"`` of a :class:`TermKind`, imported when first used."""
LAYER_SCOPE = "layer="
"""Prefix of a per-layer scope: ``@layer=model.layers.3.mlp.down_proj``."""
_PREFIXED = re.compile(r"^([a-z]+)(\d+(?:\.\d+)?)$")
_INTEGER = re.compile(r"^\d+$")


@dataclass(frozen=True)
class TermKind:
    """A spec term that transforms the whole model instead of compressing linear layers (e.g. ``remove:...``).

    ``parse(tokens)`` turns the term's tokens into checked parameters (PvqError on a bad token);
    ``apply(model, params, batches, device)`` changes the model in place and returns report fields.
    """

    name: str
    summary: str
    parse: Callable[[tuple[str, ...]], dict[str, Any]]
    apply: Callable[[nn.Module, dict[str, Any], Sequence[torch.Tensor], str], dict[str, Any]]


@dataclass(frozen=True)
class LayerStep:
    """One method, with resolved parameters, over the linear layers of one scope."""

    text: str
    method: Method
    params: dict[str, Any] = field(hash=False)
    scope: str

    def covers(self, ref: LinearRef) -> bool:
        """True when ``ref`` lies in this step's scope."""
        if self.layer is not None:
            return ref.name == self.layer
        return ref.sublayer_kind in SCOPES[self.scope]

    @property
    def layer(self) -> str | None:
        """The one layer a per-layer term (``@layer=NAME``) covers, or None for a sublayer scope."""
        return self.scope.removeprefix(LAYER_SCOPE) if self.scope.startswith(LAYER_SCOPE) else None

    def bits_per_weight(self, ref: LinearRef) -> float:
        """Storage cost of ``ref``'s weight under this method, bits per weight (overheads included)."""
        return self.method.bits_per_weight(self.params, (ref.out_features, ref.in_features))

    def wants_router_weighted_gram(self) -> bool:
        """True when the method scores experts with the router-weighted Gram (MoE-Pruner)."""
        return bool(set(self.method.name.split("+")) & ROUTER_WEIGHTED_METHODS)


@dataclass(frozen=True)
class ModelStep:
    """A model-level term (see :class:`TermKind`) with its parsed parameters."""

    text: str
    kind: TermKind
    params: dict[str, Any] = field(hash=False)


Step = LayerStep | ModelStep


@dataclass(frozen=True)
class Spec:
    """A parsed compression spec: its text and its steps in application order."""

    text: str
    steps: tuple[Step, ...]

    @property
    def layer_steps(self) -> tuple[LayerStep, ...]:
        return tuple(step for step in self.steps if isinstance(step, LayerStep))

    def step_for(self, ref: LinearRef) -> LayerStep | None:
        """The layer step that compresses ``ref``, or None (scopes of layer steps are disjoint)."""
        return next((step for step in self.layer_steps if step.covers(ref)), None)

    def stages(self) -> list[ModelStep | tuple[LayerStep, ...]]:
        """Model steps, and runs of consecutive layer steps (each run is one layer-sequential pass)."""
        stages: list[ModelStep | tuple[LayerStep, ...]] = []
        for step in self.steps:
            if isinstance(step, LayerStep) and stages and isinstance(stages[-1], tuple):
                stages[-1] = (*stages[-1], step)
            else:
                stages.append(step if isinstance(step, ModelStep) else (step,))
        return stages


@dataclass(frozen=True)
class _Term:
    text: str
    head: str
    tokens: tuple[str, ...]
    scope: str | None


def parse_spec(text: str) -> Spec:
    """Parse a compression spec (grammar in the module docstring); PvqError names the bad term or token."""
    if not isinstance(text, str) or not text.strip():
        raise PvqError(f"empty compression spec; write terms such as 'gptq:4:g128' ({_valid_heads()})")
    terms = [_split_term(part.strip(), text) for part in text.split("+")]
    steps: list[Step] = []
    index = 0
    while index < len(terms):
        term = terms[index]
        if term.head in TERM_KINDS:
            steps.append(_model_step(term))
            index += 1
            continue
        method = _method(term)
        following = terms[index + 1] if index + 1 < len(terms) else None
        if following is not None and _fuses(method, term, following):
            steps.append(_joint_step(method, term, following))
            index += 2
        else:
            steps.append(LayerStep(term.text, method, _method_params(method, term), term.scope or DEFAULT_SCOPE))
            index += 1
    _check_disjoint([step for step in steps if isinstance(step, LayerStep)])
    return Spec(text.strip(), tuple(steps))


def term_kind(head: str) -> TermKind:
    """The registered model-level term kind called ``head`` (imported on first use)."""
    module_name, _, attribute = TERM_KINDS[head].partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def _valid_heads() -> str:
    kinds = f"; model terms: {', '.join(TERM_KINDS)}" if TERM_KINDS else ""
    return f"methods: {', '.join(REGISTRY)}{kinds}"


def _split_term(part: str, spec: str) -> _Term:
    if not part:
        raise PvqError(f"spec {spec!r} has an empty term (two '+' in a row, or a '+' at an end)")
    body, at, scope = part.partition("@")
    if at and scope not in SCOPES and not (scope.startswith(LAYER_SCOPE) and scope != LAYER_SCOPE):
        choices = ", ".join(SCOPES)
        raise PvqError(f"spec term {part!r}: unknown scope {scope!r}; choose one of {choices} or layer=NAME")
    head, *tokens = body.split(":")
    if any(not token for token in tokens):
        raise PvqError(f"spec term {part!r} has an empty parameter (two ':' in a row, or a ':' at its end)")
    return _Term(part, head, tuple(tokens), scope if at else None)


def _method(term: _Term) -> Method:
    if term.head not in REGISTRY:
        raise PvqError(f"spec term {term.text!r}: unknown method {term.head!r}; {_valid_heads()}")
    return REGISTRY[term.head]


def _model_step(term: _Term) -> ModelStep:
    if term.scope is not None:
        raise PvqError(f"spec term {term.text!r}: a {term.head!r} term acts on the whole model and takes no scope")
    kind = term_kind(term.head)
    try:
        params = kind.parse(term.tokens)
    except PvqError as error:
        raise PvqError(f"spec term {term.text!r}: {error}") from None
    return ModelStep(term.text, kind, params)


def _fuses(method: Method, term: _Term, following: _Term) -> bool:
    """A pruning term followed by a quantization term (with no conflicting scope) forms one joint method."""
    return (
        method.kind == "pruning"
        and following.head in REGISTRY
        and REGISTRY[following.head].kind == "quantization"
        and term.scope in (None, following.scope)
    )


def _joint_step(pruner: Method, term: _Term, following: _Term) -> LayerStep:
    quantizer = REGISTRY[following.head]
    joint = get_method(f"{pruner.name}+{quantizer.name}")
    params = {"prune": _method_params(pruner, term), "quantize": _method_params(quantizer, following)}
    text = f"{term.text.partition('@')[0]}+{following.text}"
    return LayerStep(text, joint, joint.resolve(params), following.scope or DEFAULT_SCOPE)


def _method_params(method: Method, term: _Term) -> dict[str, Any]:
    """Map the term's tokens onto the method's parameters (position, prefix, flag, name=value, N:M pair)."""
    names = {param.name for param in method.params}
    flags = {word: (param.name, value) for param in method.params for word, value in param.flags}
    prefixes = {param.prefix: param.name for param in method.params if param.prefix}
    positional = list(method.positional)
    given: dict[str, Any] = {}
    tokens = list(term.tokens)
    while tokens:
        token = tokens.pop(0)
        prefixed = _PREFIXED.match(token)
        if "=" in token:
            name, _, value = token.partition("=")
        elif token in flags:
            name, value = flags[token]
        elif "nm" in names and _INTEGER.match(token) and tokens and _INTEGER.match(tokens[0]):
            name, value = "nm", f"{token}:{tokens.pop(0)}"
        elif prefixed and prefixed.group(1) in prefixes:
            name, value = prefixes[prefixed.group(1)], prefixed.group(2)
        else:
            while positional and positional[0] in given:
                positional.pop(0)
            if not positional:
                raise PvqError(
                    f"spec term {term.text!r}: token {token!r} is not a parameter of {method.name!r}; "
                    f"{_parameter_help(method)}"
                )
            name, value = positional.pop(0), token
        if name in given:
            raise PvqError(f"spec term {term.text!r}: parameter {name!r} is given twice")
        given[name] = value
    try:
        return method.resolve(given)
    except PvqError as error:
        raise PvqError(f"spec term {term.text!r}: {error}") from None


def _parameter_help(method: Method) -> str:
    parts = []
    for param in method.params:
        forms = [f"{param.name}=..."]
        if param.name in method.positional:
            forms.append(f"position {method.positional.index(param.name) + 1}")
        if param.prefix:
            forms.append(f"{param.prefix}<number>")
        forms += [word for word, _ in param.flags]
        parts.append(f"{param.name} ({', '.join(forms)})")
    return f"its parameters: {'; '.join(parts) or 'none'}"


def _check_disjoint(steps: list[LayerStep]) -> None:
    per_layer = [step for step in steps if step.layer is not None]
    if per_layer:
        _check_per_layer(steps, per_layer)
        return
    for i, first in enumerate(steps):
        for second in steps[i + 1 :]:
            shared = SCOPES[first.scope] & SCOPES[second.scope]
            if shared:
                raise PvqError(
                    f"spec terms {first.text!r} and {second.text!r} both compress {'/'.join(sorted(shared))} "
                    "layers; give them disjoint scopes (@attention, @mlp, @expert, @router), or write a pruning "
                    "term directly before a quantization term to apply them jointly"
                )


def _check_per_layer(steps: list[LayerStep], per_layer: list[LayerStep]) -> None:
    """Per-layer terms stand alone (no sublayer scope beside them) and name each layer once."""
    if len(per_layer) < len(steps):
        other = next(step for step in steps if step.layer is None)
        raise PvqError(
            f"spec term {other.text!r} covers a sublayer scope beside per-layer terms (@layer=...); write every "
            "compressed layer as its own @layer= term, or use sublayer scopes only"
        )
    seen: dict[str, str] = {}
    for step in per_layer:
        if step.scope in seen:
            raise PvqError(f"spec terms {seen[step.scope]!r} and {step.text!r} both compress {step.scope}")
        seen[step.scope] = step.text


def check_layers_exist(spec: Spec, model: nn.Module) -> None:
    """PvqError naming every ``@layer=`` term whose layer ``model`` lacks (before a model step runs, the names are
    those of the model as given)."""
    names = {ref.name for ref in describe(model).linears}
    missing = [step.layer for step in spec.layer_steps if step.layer is not None and step.layer not in names]
    if missing:
        examples = ", ".join(sorted(names)[:2])
        raise PvqError(
            f"the spec names {len(missing)} layer(s) the model lacks: {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''}; layers of this model look like {examples} "
            "(see `pvq info MODEL --linears`)"
        )


@dataclass
class CompressionReport:
    """What :func:`apply_spec` did: one row per compressed layer, the model size, and how it was calibrated.

    ``layers`` columns: layer, block, sublayer, role, expert, term, method, parameters (out·in), bits_per_weight,
    tokens (calibration tokens in the layer's Gram, 0 for data-free passes), relative_error
    (tr(ΔW H ΔWᵀ)/tr(W H Wᵀ) on the Gram the method used; NaN without one), output_sqnr_db.
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
) -> CompressionReport:
    """Compress ``model`` in place as ``spec`` says (see the module docstring for the order of work).

    ``batches`` (token ids, one tensor per batch) are needed when a method reads Grams; ``expert_route`` picks
    which tokens experts' Grams see (:mod:`measure.capture.experts`). Weights are checked for NaN/Inf before a pass
    starts; an error raised during a pass (an expert without tokens) leaves the earlier blocks compressed.

    ``captured``: Grams of the *unmodified* model on the same ``batches`` (e.g. a ledger's capture). With
    ``calibration="parallel"`` the first layer pass reads them instead of running the model again (the Grams
    it would capture are the same: original inputs); later passes, passes after a model step (``remove``) and
    passes over routed experts capture as usual.
    """
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if calibration not in CALIBRATIONS:
        raise PvqError(f"unknown calibration {calibration!r}; choose one of {', '.join(CALIBRATIONS)}")
    if not any(isinstance(step, ModelStep) for step in spec.steps):
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
        layer_pass = _LayerPass(describe(model), stage, calibration, device, expert_route)
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
    "relative_error", "output_sqnr_db",
]  # fmt: skip


@dataclass
class _LayerPass:
    """One layer-sequential pass of consecutive layer steps over every block."""

    arch: Architecture
    steps: tuple[LayerStep, ...]
    calibration: str
    device: str
    expert_route: str
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
            return [self.compress(ref, step, captured.grams, None) for ref, step in flat]
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
            if self.calibration == "sequential" and block_targets and not last:
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
        gram = None if grams is None else layer_gram(ref, grams, experts, step.wants_router_weighted_gram())
        if gram is not None and step.method.needs_gram and gram.tokens == 0:
            raise PvqError(
                f"no calibration token was routed to {ref.name}, so {step.text!r} has no statistics for it; "
                "use expert_route='all' (every expert sees every token) or more calibration data"
            )
        weight = method_weight(ref)
        matrix = None if gram is None or gram.tokens == 0 else gram.gram
        weight_hat = step.method.apply(weight, matrix if step.method.needs_gram else None, step.params)
        ref.set_weight(weight_hat)
        relative, sqnr = output_error(weight, weight_hat, matrix) if matrix is not None else (math.nan, math.nan)
        return {
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
            "relative_error": relative,
            "output_sqnr_db": sqnr,
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


def model_size(model: nn.Module, spec: Spec | str) -> dict[str, float]:
    """Storage of ``model`` compressed by ``spec``: every parameter at 16 bits except compressed layer weights.

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
            compressed_bits += step.bits_per_weight(ref) * ref.out_features * ref.in_features
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


def parse_term_list(text: str) -> list[LayerStep]:
    """A comma-separated list of single layer terms (``magnitude:0.5,gptq:4:g128,...``), e.g. for the ledger."""
    steps: list[LayerStep] = []
    for item in (part.strip() for part in text.split(",")):
        spec = parse_spec(item)
        if len(spec.steps) != 1 or not isinstance(spec.steps[0], LayerStep):
            raise PvqError(f"method list item {item!r} must be one layer term (or a pruning+quantization pair)")
        if any(step.text == spec.steps[0].text for step in steps):
            raise PvqError(f"method list item {item!r} is listed twice")
        steps.append(spec.steps[0])
    return steps


def describe_steps(steps: Sequence[LayerStep]) -> list[Mapping[str, Any]]:
    """JSON-ready description of layer steps: term text, method, resolved parameters, scope."""
    return [{"term": s.text, "method": s.method.name, "params": s.params, "scope": s.scope} for s in steps]


def method_weight(ref: LinearRef) -> torch.Tensor:
    """A CPU copy of ``ref``'s weight as the methods take it: float64 stays, other precisions become float32
    (float16 and bfloat16 values are exact in float32); ``set_weight`` casts a result back to the model's."""
    weight = ref.weight().detach()
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    return weight.to(device="cpu", dtype=dtype, copy=True)
