"""The joint frontier: pruning × quantization × block removal as uniform specs, sized per decoder parameter.

Every point is one compression spec applied to a copy of the model (:func:`measure.compress.apply.apply_spec`) and
scored
on the evaluation windows with the original as KL reference (:func:`measure.evaluation.perplexity.
evaluate_perplexity`, which the residual-stream evaluator of the other model experiments reproduces):

* ``sparsegpt:<s>+gptq:<b>:g<g>`` — SparseGPT at sparsity s (or the 2:4 pattern), then GPTQ of the kept weights
  with the pruned ones held at exactly zero (Kuzmin et al. 2023, arXiv 2307.02973, Sec. 5; GPTQ's keep-mask);
  s = 0 is plain ``gptq:<b>:g<g>``;
* ``remove:bi:<n>+gptq:<b>:g<g>`` — the n blocks of lowest Block Influence removed (ShortGPT, arXiv 2403.03853),
  then GPTQ calibrated on the shortened model; n = 0 is plain GPTQ again (listed once).

The grid itself (spec strings, no model) is :func:`measure.mixture.joint_grid.frontier_specs`.

**Size** is bits per decoder parameter of the original model (:class:`measure.removal.equal_size.DecoderSizes`):
removed
blocks cost 0, the kept blocks' linear weights their method's bits per weight (scales included; pruned weights
charged by a mask convention), everything else in the kept blocks (norms, biases) 16 bits:
``size = (1 − f)·B'(c̄)`` with f the removed fraction of the decoder, B' the kept decoder's
:meth:`DecoderSizes.decoder_bits` and c̄ the kept linear weights' mean bits per weight. Two mask conventions:
``free`` (the mask costs nothing, Kuzmin et al. Sec. 3) and ``entropy`` (H(s) bits per weight, the Shannon
limit of a Bernoulli(s) mask; a 2:4 mask is charged H(1/2) = 1 bit, an upper bound of its log2(6)/4 bits).

**Pareto flags**: a point is on the frontier of a convention when no other point is at most as large and at
most as far from the original in KL, and better in one of the two (:func:`pareto_flags`).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from measure.capture.statistics import Capture
from measure.compress.apply import apply_spec, model_size
from measure.compress.spec import parse_spec
from measure.evaluation.perplexity import TokenWindows, evaluate_perplexity
from measure.mixture.joint_grid import frontier_specs
from measure.models.architecture import describe
from measure.removal.equal_size import DecoderSizes, mask_convention
from measure.removal.study import decoder_sizes
from theory.accounting import BASE_BITS
from theory.errors import PvqError

CONVENTIONS = ("free", "entropy")
"""Mask conventions of the size columns (:data:`measure.removal.equal_size.MASK_CONVENTIONS`)."""
COLUMNS = [
    "spec", "removed_blocks", "removed_fraction", "sparsity", "pattern", "bits", "bits_per_decoder_parameter_free",
    "bits_per_decoder_parameter_entropy", "ppl", "kl", "base_ppl", "pareto_free", "pareto_entropy",
]  # fmt: skip
"""``ppl``: perplexity of the compressed model on the evaluation windows; ``kl``: mean KL(original ‖ compressed)
in nats per scored token; ``base_ppl``: the original's perplexity; ``pattern``: ``unstructured``, ``2:4`` or
``none`` (no pruning); ``bits``: the quantizer's integer bits (16 without quantization);
``bits_per_decoder_parameter_<convention>``: the size in bits per parameter of the original decoder blocks
(removed ones at 0 bits, uncompressed ones at 16) under that mask convention."""


def decoder_bits_per_parameter(original: DecoderSizes, kept: DecoderSizes, linear_bits: float) -> float:
    """``(1 − f)·B'(c̄)``: bits per original decoder parameter when the decoder keeps ``kept`` of ``original``'s
    parameters (removed ones cost 0) and its linear weights cost ``linear_bits`` each on average."""
    if kept.decoder > original.decoder:
        raise PvqError(f"the kept decoder ({kept.decoder} parameters) is larger than the original's")
    return kept.decoder_bits(linear_bits) * kept.decoder / original.decoder


def compressed_size(original: DecoderSizes, model: nn.Module, spec: str, convention: str) -> float:
    """Bits per original decoder parameter of ``model`` (already compressed by ``spec``) under a named mask
    convention: :func:`decoder_bits_per_parameter` with the mean bits of the kept linear weights from
    :func:`measure.compress.apply.model_size` (uncompressed linears at 16 bits)."""
    linear_bits = model_size(model, spec, mask_convention(convention))["linear_bits_per_weight"]
    return decoder_bits_per_parameter(original, decoder_sizes(describe(model)), linear_bits)


def pareto_flags(sizes: Sequence[float], losses: Sequence[float]) -> np.ndarray:
    """True for the points no other point dominates (size ≤ and loss ≤, one of them <); identical points do not
    dominate each other. One sweep over the points sorted by (size, loss): a point is dominated exactly when an
    earlier, different point has a loss at most its own."""
    size, loss = np.asarray(sizes, dtype=float), np.asarray(losses, dtype=float)
    if size.shape != loss.shape or np.isnan(size).any() or np.isnan(loss).any():
        raise PvqError("pareto_flags needs sizes and losses of the same length, without NaN")
    flags = np.zeros(size.shape, dtype=bool)
    best = np.inf
    for point, members in itertools.groupby(np.lexsort((loss, size)), key=lambda i: (size[i], loss[i])):
        flags[list(members)] = point[1] < best
        best = min(best, point[1])
    return flags


def layer_coordinates(spec: str) -> dict[str, Any]:
    """Sparsity, pattern and bits of the spec's one layer step: an integer-grid quantizer (rtn, gptq, awq), a
    pruner (its kept weights at 16 bits), or a pruner then such a quantizer."""
    layers = parse_spec(spec).layer_steps
    if len(layers) != 1:
        raise PvqError(f"a frontier spec has one layer term (optionally pruning+quantization), got {spec!r}")
    step = layers[0]
    prune = {"joint": step.params.get("prune"), "pruning": step.params}.get(step.method.kind)
    quantize = step.params["quantize"] if step.method.kind == "joint" else step.params
    bits = BASE_BITS if step.method.kind == "pruning" else quantize.get("bits")
    if bits is None or (prune is not None and "sparsity" not in prune):
        raise PvqError(f"frontier specs quantize on an integer grid (rtn, gptq, awq) after a sparsity pruner; "
                       f"{spec!r} has no bit width or sparsity")  # fmt: skip
    if prune is None:
        sparsity, pattern = 0.0, "none"
    elif prune.get("nm") is not None:
        sparsity, pattern = 1 - prune["nm"][0] / prune["nm"][1], f"{prune['nm'][0]}:{prune['nm'][1]}"
    else:
        sparsity, pattern = prune["sparsity"], "unstructured"
    return {"sparsity": sparsity, "pattern": pattern, "bits": bits}


def measure_point(
    model: nn.Module,
    spec: str,
    batches: Sequence[torch.Tensor],
    windows: TokenWindows,
    original: DecoderSizes,
    calibration: str = "parallel",
    captured: Capture | None = None,
    batch_size: int = 4,
) -> dict[str, Any]:
    """One row of the table (without base_ppl and the Pareto flags): ``spec`` applied to a copy of ``model``."""
    variant = copy.deepcopy(model)
    report = apply_spec(variant, spec, batches, calibration=calibration, captured=captured)
    result = evaluate_perplexity(variant, windows, reference=model, batch_size=batch_size)
    removed = sum(len(step["removal"]["blocks"]) for step in report.model_steps if "removal" in step)
    fraction = sum(step.get("removed_fraction", 0.0) for step in report.model_steps)
    sizes = {f"bits_per_decoder_parameter_{name}": compressed_size(original, variant, spec, name)
             for name in CONVENTIONS}
    return {"spec": spec, "removed_blocks": removed, "removed_fraction": fraction, **layer_coordinates(spec),
            **sizes, "ppl": result.perplexity, "kl": result.kl_to_reference_nats}  # fmt: skip


def joint_frontier_table(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    windows: TokenWindows,
    specs: Sequence[str] | None = None,
    calibration: str = "parallel",
    captured: Capture | None = None,
    batch_size: int = 4,
    on_spec: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """The joint-frontier table (:data:`COLUMNS`), one row per spec of ``specs`` (default: the full grid of
    :func:`measure.mixture.joint_grid.frontier_specs`).

    ``batches``: calibration token ids; ``windows``: :class:`measure.evaluation.perplexity.TokenWindows`;
    ``captured``: Grams of the unmodified model on ``batches`` for ``calibration="parallel"`` (read by specs
    without removal); ``on_spec(spec)`` is called before each spec (progress). The model is not modified.
    """
    specs = frontier_specs() if specs is None else list(specs)
    if not specs:
        raise PvqError("the joint frontier needs at least one spec")
    for spec in specs:
        layer_coordinates(spec)
    original = decoder_sizes(describe(model))
    base = evaluate_perplexity(model, windows, batch_size=batch_size).perplexity
    rows = []
    for spec in specs:
        if on_spec is not None:
            on_spec(spec)
        rows.append(measure_point(model, spec, batches, windows, original, calibration, captured, batch_size))
    table = pd.DataFrame(rows).assign(base_ppl=base)
    for name in CONVENTIONS:
        table[f"pareto_{name}"] = pareto_flags(table[f"bits_per_decoder_parameter_{name}"], table["kl"])
    return table[COLUMNS]
