"""The per-layer error ledger: every (layer, method, setting) measured on real activations, as one tidy table.

For a linear layer y = x Wᵀ with calibration inputs X (tokens × in), H = XᵀX, and a compressed weight Ŵ:

* relative output error e = ‖X(Ŵ − W)ᵀ‖²_F / ‖XWᵀ‖²_F = tr(ΔW H ΔWᵀ) / tr(W H Wᵀ) (the layer-wise objective of
  OBS / GPTQ, Frantar et al. 2022, arXiv 2210.17323, Eq. 1), computed in float64 from the Gram;
* output SQNR = −10·log10 e dB; weight SQNR = 10·log10(‖W‖²_F / ‖ΔW‖²_F) dB (Kuzmin et al. 2023, Sec. 4);
* the weight's sample kurtosis, both conventions of ``scipy.stats.kurtosis`` (moment estimator, bias=True):
  Fisher (excess, normal = 0) and Pearson (normal = 3).

**Local error with original inputs.** The model is captured once, uncompressed; each method is then applied to
each layer alone, on that layer's original Gram, and the model is never modified. A row is therefore the error
a method makes on one layer given exact inputs, not the error after earlier layers were compressed (for that,
compress with :func:`measure.compress.apply.apply_spec`, ``calibration="sequential"``). Each method runs once per
layer.
Experts' rows use the Gram of the tokens routed to them (or all tokens, ``expert_route="all"``); MoE-Pruner
reads the router-weighted Gram (:mod:`measure.capture.experts`), and its error is still reported on the plain one.

:func:`weight_tensor_study` is the paper's Fig. 3 on a model: for every linear weight, INT-b weight SQNR vs
magnitude pruning at equal compression with the tensor's kurtosis, b = 2…8
(:func:`theory.study.tensor_sqnr_table`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial

import pandas as pd
import torch
from scipy import stats
from torch import nn
from tqdm import tqdm

from measure.capture.experts import ExpertCapture
from measure.capture.placement import ON_CPU, Placement, capture_placed
from measure.capture.statistics import BlockHooks, Capture
from measure.compress.apply import check_finite_weight, layer_gram
from measure.compress.layer import compress_layer, method_weight
from measure.compress.methods.metrics import LayerErrorMeter, weight_sqnr_db
from measure.compress.parallel import fork_map
from measure.compress.spec import LayerStep, parse_term_list
from measure.models.architecture import Architecture, Block, LinearRef, describe
from theory.accounting import PAPER_CONVENTION, Convention
from theory.errors import PvqError
from theory.study import DEFAULT_BITS, tensor_sqnr_table

DEFAULT_METHODS = (
    "magnitude:0.5,wanda:0.5,sparsegpt:0.5,magnitude:2:4,wanda:2:4,sparsegpt:2:4,"
    "rtn:3:channel,rtn:4:channel,rtn:8:channel,rtn:3:g128,rtn:4:g128,rtn:8:g128,"
    "gptq:3:channel,gptq:4:channel,gptq:8:channel,gptq:3:g128,gptq:4:g128,gptq:8:g128,"
    "awq:3:g128,awq:4:g128,awq:8:g128,mxfp4,nf4"
)
"""The default ledger methods: magnitude, Wanda, SparseGPT at 50 % and 2:4; RTN, GPTQ and AWQ at 3/4/8 bits
in groups of 128, RTN and GPTQ also per channel; MXFP4; NF4."""
ERROR_DEFINITION = (
    "relative_error = tr(dW H dW^T) / tr(W H W^T), H = X^T X of the layer's inputs in the original (uncompressed) "
    "model, float64; each method applied to each layer alone (local error with original inputs)"
)
KURTOSIS_DEFINITION = (
    "scipy.stats.kurtosis(W.ravel(), bias=True): kurtosis_fisher with fisher=True (excess, normal 0), "
    "kurtosis_pearson with fisher=False (normal 3)"
)


def weight_kurtosis(weight: torch.Tensor) -> tuple[float, float]:
    """(Fisher, Pearson) sample kurtosis of the weight's entries: m4/m2² − 3 and m4/m2² (scipy, bias=True)."""
    values = weight.detach().double().reshape(-1).numpy()
    return float(stats.kurtosis(values, fisher=True)), float(stats.kurtosis(values, fisher=False))


LEDGER_COLUMNS = [
    "model", "layer", "block", "sublayer", "role", "expert", "out_features", "in_features", "parameters",
    "tokens", "output_energy", "output_energy_share", "kurtosis_fisher", "kurtosis_pearson", "term", "method",
    "params", "kind", "scope", "gram",
    "bits_per_weight", "relative_error", "sqnr_db", "weight_sqnr_db", "zero_fraction", "seconds",
]  # fmt: skip
"""``parameters`` = out·in weights (biases excluded); ``tokens`` = calibration tokens in the layer's Gram;
``output_energy`` = tr(W H Wᵀ) = ‖XWᵀ‖² (bias-free) and ``output_energy_share`` its share of the sum over the
ledger's layers (massive-activation layers hold most of it, so energy-weighted aggregates are dominated by them);
``gram`` = which Gram the method read (``input`` or ``router_weighted``); ``seconds`` = the method's run time."""


@dataclass
class Ledger:
    """A ledger table with what produced it (the capture, expert statistics and timings)."""

    table: pd.DataFrame
    capture: Capture
    experts: ExpertCapture
    skipped_layers: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    weights: dict[str, dict[str, torch.Tensor]] | None = None
    """With ``keep_weights``: layer name -> term -> the compressed weight Ŵ the row was measured on."""


def select_layers(
    refs: Sequence[LinearRef], pattern: str | None, covers: Callable[[LinearRef], bool] = lambda ref: True
) -> list[LinearRef]:
    """Layers ``covers`` accepts whose name matches ``pattern`` (``re.search``); PvqError when none does."""
    try:
        regex = re.compile(pattern) if pattern else None
    except re.error as error:
        raise PvqError(f"the layer pattern {pattern!r} is not a valid regular expression: {error}") from None
    covered = [ref for ref in refs if covers(ref)]
    chosen = [ref for ref in covered if regex is None or regex.search(ref.name)]
    if not chosen:
        examples = ", ".join(ref.name for ref in covered[:3])
        raise PvqError(
            f"the layer pattern {pattern!r} matches none of the {len(covered)} layers the methods cover "
            f"(names look like {examples}); see `pvq info MODEL --linears`"
        )
    return chosen


def build_ledger(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    methods: Sequence[LayerStep] | str,
    placement: Placement = ON_CPU,
    layers: str | None = None,
    keep_rows: int = 0,
    expert_route: str = "routed",
    model_id: str = "",
    progress: bool = False,
    workers: int | None = 1,
    block_hooks: BlockHooks | None = None,
    captured: Capture | None = None,
    keep_weights: bool = False,
) -> Ledger:
    """Capture ``model`` once on ``batches``, then measure every method on every selected layer (module docstring).

    ``methods`` is a list of layer steps or a comma-separated term list (``magnitude:0.5,gptq:4:g128``);
    ``keep_rows`` keeps that many input rows per Gram (for checks); the model is not modified. ``workers``
    processes share the methods phase (None: one per CPU core; see :func:`measure_layers`). The capture pass runs
    as ``placement`` says (:func:`measure.capture.placement.capture_placed`: in the sequential capture mode each
    block visits the placement's device for its turn, and its peak memory is logged); ``block_hooks(block)``
    registers further hooks for that pass. The methods run on CPU copies of the weights (float32 for
    half-precision models). ``captured``: Grams of this model on the same ``batches`` (e.g. an
    importance pass's), read instead of capturing again when no selected layer is a routed expert (experts need
    their own routed Grams). ``keep_weights`` keeps every compressed weight the rows were measured on
    (``Ledger.weights``; memory: one copy of the selected layers per method).
    """
    steps = parse_term_list(methods) if isinstance(methods, str) else list(methods)
    arch = describe(model)
    refs = select_layers(arch.linears, layers, lambda ref: any(step.covers(ref) for step in steps))
    for ref in refs:
        check_finite_weight(ref)
    experts = ExpertCapture(expert_route, keep_rows)
    start = time.perf_counter()
    if captured is not None and all(ref.expert_index is None for ref in refs):
        captured.check_reusable(refs, sum(batch.numel() for batch in batches))
    else:
        captured = _capture_with_progress(model, batches, arch, placement, keep_rows, experts, block_hooks,
                                          progress)  # fmt: skip
    captured_at = time.perf_counter()
    empty = set(experts.empty_experts())
    skipped = [ref.name for ref in refs if ref.expert_index is not None and _expert_of(ref) in empty]
    measured = [ref for ref in refs if ref.name not in skipped]
    rows, weights = measure_layers(measured, steps, captured, experts, model_id, workers, progress, keep_weights)
    table = pd.DataFrame(rows, columns=LEDGER_COLUMNS).astype({"expert": "Int64"})
    energy = table.drop_duplicates("layer")["output_energy"].sum()
    table["output_energy_share"] = table["output_energy"] / energy if energy > 0 else float("nan")
    seconds = {"capture": captured_at - start, "methods": time.perf_counter() - captured_at}
    return Ledger(table, captured, experts, skipped, seconds, weights if keep_weights else None)


def measure_layers(
    refs: Sequence[LinearRef],
    steps: Sequence[LayerStep],
    captured: Capture,
    experts: ExpertCapture,
    model_id: str = "",
    workers: int | None = 1,
    progress: bool = False,
    keep_weights: bool = False,
) -> tuple[list[dict], dict[str, dict[str, torch.Tensor]]]:
    """Ledger rows of every layer of ``refs``, in order, computed by ``workers`` processes (None: one per core),
    and, with ``keep_weights``, each layer's compressed weights by term (else an empty dict).

    The column sweeps of GPTQ and SparseGPT are sequences of small products that one core runs no faster with
    more threads, so the layers are shared among forked single-threaded workers instead (the model, Grams and
    methods are inherited, not copied); ``workers=1``, or a platform without ``fork``, runs them in this process.
    Rows do not depend on the number of workers (tested).
    """
    bar = tqdm(total=len(refs), desc="ledger", unit="layer", disable=not progress)
    try:
        per_layer = fork_map(partial(_layer_rows, steps=steps, captured=captured, experts=experts,
                                     model_id=model_id, keep_weights=keep_weights), refs, workers,
                             on_result=lambda rows: bar.update())  # fmt: skip
    finally:
        bar.close()
    weights = {ref.name: kept for ref, (_, kept) in zip(refs, per_layer, strict=True) if kept}
    return [row for rows, _ in per_layer for row in rows], weights


def _capture_with_progress(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    arch: Architecture,
    placement: Placement,
    keep_rows: int,
    experts: ExpertCapture,
    block_hooks: BlockHooks | None,
    progress: bool,
) -> Capture:
    """The ledger's capture pass: Grams, expert Grams and ``block_hooks``, with a progress bar over batches."""
    with tqdm(total=len(batches), desc="capture", unit="batch", disable=not progress) as bar:
        def count_batch(*_: object) -> None:
            bar.update()

        def ledger_hooks(block: Block) -> list[torch.utils.hooks.RemovableHandle]:
            handles = experts.hooks(block) + (block_hooks(block) if block_hooks else [])
            if block is arch.blocks[-1]:
                handles.append(block.module.register_forward_hook(count_batch))
            return handles

        return capture_placed(model, batches, placement, arch=arch, keep_rows=keep_rows, block_hooks=ledger_hooks)


def _expert_of(ref: LinearRef) -> str:
    """``<experts>.<e>`` of an expert layer named ``<experts>.<e>.<gate|up|down>``."""
    return ref.name.rpartition(".")[0]


def _layer_rows(
    ref: LinearRef,
    steps: Sequence[LayerStep],
    captured: Capture,
    experts: ExpertCapture,
    model_id: str,
    keep_weights: bool = False,
) -> tuple[list[dict], dict[str, torch.Tensor]]:
    weight = method_weight(ref)
    gram = layer_gram(ref, captured.grams, experts)
    meter = LayerErrorMeter(weight, gram.gram)
    fisher, pearson = weight_kurtosis(weight)
    shape = (ref.out_features, ref.in_features)
    common = {
        "model": model_id, "layer": ref.name, "block": ref.block_index, "sublayer": ref.sublayer_kind,
        "role": ref.role, "expert": ref.expert_index, "out_features": shape[0], "in_features": shape[1],
        "parameters": shape[0] * shape[1], "tokens": gram.tokens, "output_energy": meter.signal,
        "kurtosis_fisher": fisher,
        "kurtosis_pearson": pearson,
    }  # fmt: skip
    rows = []
    kept: dict[str, torch.Tensor] = {}
    for step in (step for step in steps if step.covers(ref)):
        weighted = ref.expert_index is not None and step.wants_router_weighted_gram()
        method_gram = layer_gram(ref, captured.grams, experts, weighted).gram if weighted else meter.gram
        compressed = compress_layer(weight, step, method_gram, meter)
        weight_hat = compressed.weight_hat
        rows.append({
            **common,
            "term": step.text, "method": step.method.name, "params": json.dumps(step.params, sort_keys=True),
            "kind": step.method.kind, "scope": step.scope, "gram": "router_weighted" if weighted else "input",
            "bits_per_weight": step.method.bits_per_weight(step.params, shape),
            "relative_error": compressed.relative_error, "sqnr_db": compressed.sqnr_db,
            "weight_sqnr_db": weight_sqnr_db(weight, weight_hat),
            "zero_fraction": float((weight_hat == 0).double().mean()), "seconds": compressed.seconds,
        })  # fmt: skip
        if keep_weights:
            kept[step.text] = weight_hat
    return rows, kept


def weight_tensor_study(
    model: nn.Module,
    bits: Iterable[int] = DEFAULT_BITS,
    convention: Convention = PAPER_CONVENTION,
    layers: str | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """INT-b vs magnitude pruning at equal compression on every linear weight tensor (Kuzmin et al. 2023, Fig. 3).

    One row per (tensor, b) from :func:`theory.study.tensor_sqnr_table` (per-tensor scale, MSE clipping; sparsity
    from ``convention``), with the layer's name, block, sublayer, role and expert.
    """
    bits = tuple(bits)
    refs = select_layers(describe(model).linears, layers)
    tables = []
    for ref in tqdm(refs, desc="weight study", unit="tensor", disable=not progress):
        check_finite_weight(ref)
        table = tensor_sqnr_table(ref.weight().detach().double().cpu().numpy(), bits, convention)
        names = {"layer": ref.name, "block": ref.block_index, "sublayer": ref.sublayer_kind, "role": ref.role}
        tables.append(table.assign(**names, expert=ref.expert_index))
    return pd.concat(tables, ignore_index=True).astype({"expert": "Int64"})
