"""Compression methods as pure functions, named in one registry.

``get_method(name).apply(W, H, params)`` returns the compressed weight (same shape and dtype);
``get_method(name).bits_per_weight(params, (out, in), convention)`` its storage cost. Joint methods are
compositions ``"<pruning>+<quantization>"`` (e.g. ``"sparsegpt+gptq"``) with params
``{"prune": {...}, "quantize": {...}}``. Adding a method is one function plus one entry in ``METHODS``.
"""

from __future__ import annotations

import math
from functools import partial

from measure.compress.methods import awq, formats, gptq, kquant, pruning, quantization, sparsegpt
from measure.compress.methods.joint import compose
from measure.compress.methods.method import Compress, Method
from measure.compress.methods.params import (
    CLIP_CHOICES,
    Param,
    as_bits,
    as_bool,
    as_choice,
    as_fraction,
    as_group,
    as_nm,
    as_positive_int,
)
from measure.compress.methods.uniform import grid_bits_per_weight
from theory.errors import PvqError

SPARSITY = Param("sparsity", None, as_fraction, "fraction of the weights set to zero, in [0, 1)")
NM = Param(
    "nm", None, as_nm, "N:M pattern such as '2:4' (N of every M consecutive inputs kept), instead of sparsity"
)
FRACTION = Param("fraction", None, as_fraction, "fraction of the rows / heads removed, in [0, 1)")
BLOCK_SIZE = Param("block_size", 128, as_positive_int, "columns per OBS block (lazy batch updates)", prefix="b")
PERCDAMP = Param("percdamp", 0.01, as_fraction, "damping λ = percdamp·mean(diag H) added to H")
BITS = Param("bits", 4, as_bits(2, 16), "bits per integer code (2..16)")
GROUP = Param(
    "group",
    "channel",
    as_group,
    "one scale per 'tensor', per 'channel' (output row) or per g inputs",
    prefix="g",
    flags=(("tensor", "tensor"), ("channel", "channel")),
)
SYMMETRIC = Param(
    "symmetric",
    True,
    as_bool,
    "symmetric grid of GPTQ's convention (s = 2·max|w|/(2^b − 1), fixed zero point 2^(b−1)); "
    "asym: min-max range with an integer zero point",
    flags=(("sym", True), ("asym", False)),
)
CLIP = Param(
    "clip",
    "minmax",
    as_choice(CLIP_CHOICES),
    "scale from the range, or MSE-optimal clipping ratio in [0.2, 1]",
    flags=(("minmax", "minmax"), ("mse", "mse")),
)
ACT_ORDER = Param("act_order", False, as_bool, "process columns by decreasing H_jj", flags=(("act", True),))
GRID = (BITS, GROUP, SYMMETRIC, CLIP)


def _grid_element_bits(params: dict, shape: tuple[int, int]) -> float:
    return params["bits"]


def _kquant(layout: str, summary: str) -> Method:
    return Method(
        layout,
        "quantization",
        summary,
        False,
        partial(kquant.kquant_quantize, layout=layout),
        kquant.kquant_bits_per_weight_padded(layout),
        element_bits=lambda params, shape: kquant.LAYOUTS[layout].bits,
    )


def _mx(name: str, element: str) -> Method:
    return Method(
        name,
        "quantization",
        f"OCP MX {element} with a shared E8M0 scale per 32 inputs",
        False,
        partial(formats.mx_quantize, element=element),
        formats.mx_bits(element),
        element_bits=lambda params, shape: formats.mx_element_bits(element),
    )


def _score_pruner(name: str, summary: str, compress: Compress, needs_gram: bool, per_row: bool) -> Method:
    return Method(
        name,
        "pruning",
        summary,
        needs_gram,
        compress,
        pruning.unstructured_bits_per_weight(per_row),
        params=(SPARSITY, NM),
        positional=("sparsity",),
    )


METHODS: tuple[Method, ...] = (
    _score_pruner("magnitude", "magnitude pruning per layer", pruning.magnitude_prune, False, per_row=False),
    _score_pruner("magnitude_row", "magnitude pruning per output row", pruning.magnitude_row_prune, False, True),
    _score_pruner("wanda", "Wanda pruning |W|·‖X_j‖ per output row", pruning.wanda_prune, True, per_row=True),
    _score_pruner(
        "moe_pruner",
        "MoE-Pruner |W|·‖X_j·gate‖ (router-weighted Gram) per output row",
        pruning.wanda_prune,
        True,
        per_row=True,
    ),
    Method(
        "sparsegpt",
        "pruning",
        "SparseGPT pruning with OBS reconstruction",
        True,
        sparsegpt.sparsegpt_prune,
        pruning.unstructured_bits_per_weight(per_row=False),
        params=(SPARSITY, NM, BLOCK_SIZE, PERCDAMP),
        positional=("sparsity",),
    ),
    Method(
        "row_prune",
        "pruning",
        "removal of the output rows of smallest norm",
        False,
        pruning.row_prune,
        pruning.row_bits_per_weight,
        params=(FRACTION,),
        positional=("fraction",),
    ),
    Method(
        "head_prune",
        "pruning",
        "removal of the attention heads of smallest norm",
        False,
        pruning.head_prune,
        pruning.head_bits_per_weight,
        params=(
            FRACTION,
            Param("head_dim", 64, as_positive_int, "rows (or columns) per attention head", prefix="d"),
            Param(
                "axis",
                "rows",
                as_choice(("rows", "columns")),
                "heads are output rows (q/k/v) or input columns (o)",
                flags=(("rows", "rows"), ("columns", "columns")),
            ),
        ),
        positional=("fraction",),
    ),
    Method(
        "rtn",
        "quantization",
        "round-to-nearest integer quantization",
        False,
        quantization.rtn_quantize,
        grid_bits_per_weight,
        params=GRID,
        positional=("bits",),
        element_bits=_grid_element_bits,
    ),
    Method(
        "awq",
        "quantization",
        "AWQ activation-aware channel scaling, then round-to-nearest (scales folded into the input: no bits)",
        True,
        awq.awq_quantize,
        grid_bits_per_weight,
        params=GRID,
        positional=("bits",),
        element_bits=_grid_element_bits,
    ),
    Method(
        "gptq",
        "quantization",
        "GPTQ integer quantization with OBS error feedback",
        True,
        gptq.gptq_quantize,
        grid_bits_per_weight,
        params=(*GRID, ACT_ORDER, BLOCK_SIZE, PERCDAMP),
        positional=("bits",),
        element_bits=_grid_element_bits,
        accepts_keep=True,
    ),
    Method(
        "nf4",
        "quantization",
        "QLoRA NF4 with absmax per block",
        False,
        formats.nf4_quantize,
        formats.nf4_bits,
        params=(
            Param("block_size", 64, as_positive_int, "inputs per absmax block", prefix="b"),
            Param("double_quant", True, as_bool, "store the absmax constants in 8 bits", flags=(("dq", True),)),
        ),
        element_bits=lambda params, shape: 4,
    ),
    _mx("mxint8", "int8"),
    _mx("mxfp8_e4m3", "fp8_e4m3"),
    _mx("mxfp8_e5m2", "fp8_e5m2"),
    _mx("mxfp6_e3m2", "fp6_e3m2"),
    _mx("mxfp6_e2m3", "fp6_e2m3"),
    _mx("mxfp4", "fp4_e2m1"),
    _kquant("q4_k", "GGUF Q4_K-like super-block quantization"),
    _kquant("q3_k", "GGUF Q3_K-like super-block quantization"),
    Method(
        "int8_outlier",
        "quantization",
        "LLM.int8()-style 8-bit with 16-bit outlier input columns",
        True,
        quantization.int8_outlier_quantize,
        quantization.int8_outlier_bits_per_weight,
        params=(Param("outlier_fraction", 0.01, as_fraction, "fraction of input columns kept in 16 bits"),),
        positional=("outlier_fraction",),
        element_bits=quantization.int8_outlier_element_bits,
    ),
    Method(
        "splitquant",
        "quantization",
        "SplitQuant: three k-means clusters quantized as three layers",
        False,
        quantization.splitquant_quantize,
        quantization.splitquant_bits_per_weight,
        params=(
            BITS,
            Param("group", "tensor", as_group, GROUP.doc, prefix="g", flags=GROUP.flags),
            Param("symmetric", False, as_bool, SYMMETRIC.doc, flags=SYMMETRIC.flags),
            CLIP,
        ),
        positional=("bits",),
        element_bits=lambda params, shape: quantization.SPLIT_CLUSTERS * params["bits"],
    ),
    Method(
        "ternary",
        "quantization",
        "BitNet b1.58 absmean ternary",
        False,
        formats.ternary_quantize,
        formats.ternary_bits,
        params=(
            Param(
                "packing",
                "ideal",
                as_choice(("ideal", "2bit")),
                "log2(3) bits (ideal) or 2 bits per weight",
                flags=(("ideal", "ideal"), ("2bit", "2bit")),
            ),
        ),
        element_bits=lambda params, shape: math.log2(3) if params["packing"] == "ideal" else 2,
    ),
)
REGISTRY: dict[str, Method] = {method.name: method for method in METHODS}


def method_names(kind: str | None = None) -> list[str]:
    """Registered method names, optionally of one kind (``"pruning"`` or ``"quantization"``)."""
    return [method.name for method in METHODS if kind in (None, method.kind)]


def get_method(name: str) -> Method:
    """The method called ``name``; ``"<pruning>+<quantization>"`` composes two
    (:mod:`measure.compress.methods.joint`)."""
    if name in REGISTRY:
        return REGISTRY[name]
    if "+" in name:
        pruner, _, quantizer = name.partition("+")
        return compose(get_method(pruner), get_method(quantizer))
    raise PvqError(
        f"unknown compression method {name!r}; valid names: {', '.join(REGISTRY)}, "
        "or PRUNING+QUANTIZATION such as sparsegpt+gptq"
    )
