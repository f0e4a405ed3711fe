"""Compression specs: one string says how to compress a whole model, and the parser that reads it.

Grammar::

    spec := term ("+" term)*
    term := head (":" token)* ("@" scope)?

* ``head`` is a compression method of :mod:`measure.compress.methods` (``magnitude``, ``wanda``, ``sparsegpt``,
``rtn``,
  ``gptq``, ``nf4``, ``mxfp4``, ...) or a model-level term kind of :data:`TERM_KINDS` (layer removal adds
  ``remove``).
* Tokens set the method's parameters (:mod:`measure.compress.methods.params`): by position (``gptq:4`` → bits 4),
by
  prefix (``g128`` → group 128), by flag word (``channel``, ``asym``, ``mse``), as ``name=value``, and for
  pruners as an N:M pair (``sparsegpt:2:4`` → nm 2:4).
* ``scope`` picks the linear layers of every block by sublayer kind (:data:`SCOPES`); without one a term
  covers attention, MLP and expert layers, and routers stay at 16 bits. ``@layer=NAME`` picks the one linear
  layer called NAME (a per-layer allocation, :mod:`measure.mixture`, is a spec of such terms); per-layer terms
  are not mixed with sublayer scopes, and a layer the model lacks is an error before anything is compressed.
* A pruning term directly followed by a quantization term is one joint method when the pruning term carries no
  other scope (it takes the quantization term's): prune, then quantize the kept weights (Kuzmin et al. 2023,
  arXiv 2307.02973, Sec. 5), e.g. ``sparsegpt:0.5+gptq:4:g128``. Otherwise every layer belongs to at most one term.

:func:`measure.compress.apply.apply_spec` runs a parsed spec on a model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from measure.capture.experts import ROUTER_WEIGHTED_METHODS
from measure.compress.methods import REGISTRY, get_method
from measure.compress.methods.method import Method
from measure.compress.remove import REMOVE_TERM
from measure.compress.shrink.term import SHRINK_TERM
from measure.compress.term_kind import TermKind
from measure.models.architecture import LinearRef
from measure.models.families import MIXER_KINDS
from theory.accounting import PAPER_CONVENTION, Convention
from theory.errors import PvqError, choose

CALIBRATION_STREAMS = ("sequential", "parallel")
"""Which model's stream a layer pass captures its Grams on (``apply_spec(calibration=...)``): ``sequential``, the
model compressed so far (every block sees the errors of the blocks before it; GPTQ's order); ``parallel``, the
original model. Not the capture mode of :class:`measure.capture.placement.Placement`, which says only where the
blocks of one capture run."""
SCOPES: dict[str, frozenset[str]] = {
    "all": frozenset({*MIXER_KINDS, "mlp", "expert"}),
    "attention": frozenset({"attention"}),
    "mlp": frozenset({"mlp", "expert"}),
    "expert": frozenset({"expert"}),
    "router": frozenset({"router"}),
    "mixer": frozenset(MIXER_KINDS),
}
"""Scope name -> the ``LinearRef.sublayer_kind`` values it covers (``mlp`` includes shared and routed experts,
``mixer`` every token mixer: attention, linear attention, state-space and convolution projections)."""
DEFAULT_SCOPE = "all"
TERM_KINDS: dict[str, TermKind] = {term.name: term for term in (REMOVE_TERM, SHRINK_TERM)}
"""Model-level term kinds by head (:class:`measure.compress.term_kind.TermKind`)."""
LAYER_SCOPE = "layer="
"""Prefix of a per-layer scope: ``@layer=model.layers.3.mlp.down_proj``."""
_PREFIXED = re.compile(r"^([a-z]+)(\d+(?:\.\d+)?)$")
_INTEGER = re.compile(r"^\d+$")


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

    def bits_per_weight(self, ref: LinearRef, convention: Convention = PAPER_CONVENTION) -> float:
        """Storage cost of ``ref``'s weight under this method, bits per weight (overheads included; pruning masks
        charged by ``convention``, free by default)."""
        return self.method.bits_per_weight(self.params, (ref.out_features, ref.in_features), convention)

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


def check_spec_for_model(text: str, model: nn.Module) -> Spec:
    """:func:`parse_spec` of ``text`` with every model-level term checked against ``model`` (its kind's
    :attr:`TermKind.check`: block counts, widths), from the config and module structure before any calibration
    data is read; PvqError names the first refused term."""
    spec = parse_spec(text)
    for step in spec.steps:
        if isinstance(step, ModelStep) and step.kind.check is not None:
            try:
                step.kind.check(model, step.params)
            except PvqError as error:
                raise PvqError(f"spec term {step.text!r}: {error}") from None
    return spec


def term_kind(head: str) -> TermKind:
    """The registered model-level term kind called ``head``."""
    return TERM_KINDS[head]


def _valid_heads() -> str:
    kinds = f"; model terms: {', '.join(TERM_KINDS)}" if TERM_KINDS else ""
    return f"methods: {', '.join(REGISTRY)}{kinds}"


def _split_term(part: str, spec: str) -> _Term:
    if not part:
        raise PvqError(f"spec {spec!r} has an empty term (two '+' in a row, or a '+' at an end)")
    body, at, scope = part.partition("@")
    if at and not (scope.startswith(LAYER_SCOPE) and scope != LAYER_SCOPE):
        choose("scope", scope, [*SCOPES, f"{LAYER_SCOPE}NAME"])
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
