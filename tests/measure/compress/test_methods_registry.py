"""The method registry: names, parameter schemas, purity, bits-per-weight formulas and clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from method_toys import random_layer

from measure.compress.methods import METHODS, get_method, method_names
from theory.accounting import Convention
from theory.errors import PvqError

SHAPE = (64, 256)
NONE, BITMASK, NM = Convention("none"), Convention("bitmask"), Convention("nm")
EXPECTED_NAMES = {
    "magnitude", "magnitude_row", "wanda", "sparsegpt", "moe_pruner", "row_prune", "head_prune", "rtn", "gptq",
    "awq", "nf4", "mxfp4", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp8_e4m3", "mxfp8_e5m2", "mxint8", "q4_k", "q3_k",
    "int8_outlier", "splitquant", "ternary",
}  # fmt: skip


def example_params(name: str) -> dict:
    """Valid parameters for every registered method."""
    return {"row_prune": {"fraction": 0.25}, "head_prune": {"fraction": 0.25, "head_dim": 16}}.get(
        name, {"sparsity": 0.5} if get_method(name).kind == "pruning" else {}
    )


@pytest.fixture(scope="module")
def layer():
    return random_layer(columns=256)


def test_registry_names_every_method() -> None:
    assert set(method_names()) == EXPECTED_NAMES
    assert set(method_names("pruning")) == {"magnitude", "magnitude_row", "wanda", "sparsegpt", "moe_pruner",
                                            "row_prune", "head_prune"}  # fmt: skip
    for method in METHODS:
        assert method.summary
        if method.kind == "quantization":
            assert method.element_bits is not None


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_method_is_pure_and_keeps_shape_and_dtype(layer, name, dtype) -> None:
    weight, _, gram = layer
    weight = weight.to(dtype)
    original = weight.clone()
    compressed = get_method(name).apply(weight, gram, example_params(name))
    assert compressed.shape == weight.shape and compressed.dtype == dtype
    assert torch.isfinite(compressed).all() and not torch.equal(compressed, weight)
    assert torch.equal(weight, original)


def test_resolve_fills_defaults_and_coerces_strings() -> None:
    gptq = get_method("gptq")
    assert gptq.resolve({"bits": "3", "group": "128", "act_order": "true"}) == {
        "bits": 3, "group": 128, "symmetric": True, "clip": "minmax", "act_order": True, "block_size": 128,
        "percdamp": 0.01,
    }  # fmt: skip
    assert gptq.positional == ("bits",)
    assert {p.name: p.prefix for p in gptq.params}["group"] == "g"
    assert dict({p.name: p.flags for p in gptq.params}["symmetric"])["asym"] is False
    assert get_method("wanda").resolve({"nm": "2:4"})["nm"] == (2, 4)
    assert get_method("rtn").resolve({"group": "tensor"})["group"] == "tensor"


@pytest.mark.parametrize(
    ("name", "params", "convention", "expected"),
    [
        ("magnitude", {"sparsity": 0.5}, NONE, 8.0),
        ("magnitude", {"sparsity": 0.5}, BITMASK, 9.0),
        ("sparsegpt", {"sparsity": 0.5}, Convention("index", index_bits=16), 16.0),
        ("magnitude", {"sparsity": 0.3}, NONE, 16 * (1 - round(0.3 * 64 * 256) / (64 * 256))),
        ("magnitude_row", {"sparsity": 0.3}, NONE, 16 * (1 - 77 / 256)),
        ("moe_pruner", {"sparsity": 0.3}, NONE, 16 * (1 - 77 / 256)),
        ("moe_pruner", {"sparsity": 0.5}, BITMASK, 8 + 1),
        ("moe_pruner", {"nm": "2:4"}, NM, 0.5 * 16 + 2 * 2 / 4),
        ("wanda", {"nm": "2:4"}, NM, 0.5 * 16 + 2 * 2 / 4),
        ("sparsegpt", {"nm": "4:8"}, NM, 0.5 * 16 + 4 * 3 / 8),
        ("wanda", {"nm": "2:4"}, NONE, 8.0),
        ("row_prune", {"fraction": 0.25}, NONE, 12.0),
        ("head_prune", {"fraction": 0.3, "head_dim": 16}, NONE, 12.0),
        ("head_prune", {"fraction": 0.5, "head_dim": 64, "axis": "columns"}, NONE, 8.0),
        ("rtn", {"bits": 4, "group": 128}, NONE, 4 + 16 / 128),
        ("rtn", {"bits": 4, "group": 128, "symmetric": False}, NONE, 4 + 20 / 128),
        ("gptq", {"bits": 3, "group": "channel"}, NONE, 3 + 16 / 256),
        ("gptq", {"bits": 8, "group": "tensor"}, NONE, 8 + 16 / (64 * 256)),
        ("rtn", {"bits": 4, "group": 100}, NONE, 4 + 16 * 3 / 256),
        ("nf4", {}, NONE, 4 + 8 / 64 + 32 / (64 * 256)),
        ("nf4", {"double_quant": False}, NONE, 4.5),
        ("mxfp4", {}, NONE, 4.25),
        ("mxfp6_e3m2", {}, NONE, 6.25),
        ("mxfp6_e2m3", {}, NONE, 6.25),
        ("mxfp8_e4m3", {}, NONE, 8.25),
        ("mxfp8_e5m2", {}, NONE, 8.25),
        ("mxint8", {}, NONE, 8.25),
        ("q4_k", {}, NONE, (256 * 4 + 8 * 12 + 2 * 16) / 256),
        ("q3_k", {}, NONE, (256 * 3 + 16 * 6 + 16) / 256),
        ("splitquant", {"bits": 3}, NONE, 3 * (3 + 19 / (64 * 256))),
        ("ternary", {}, NONE, math.log2(3) + 16 / (64 * 256)),
        ("ternary", {"packing": "2bit"}, NONE, 2 + 16 / (64 * 256)),
        ("sparsegpt+gptq", {"prune": {"sparsity": 0.5}, "quantize": {"bits": 4, "group": 128}}, NONE, 2.125),
        ("sparsegpt+gptq", {"prune": {"sparsity": 0.5}, "quantize": {"bits": 4, "group": 128}}, BITMASK, 3.125),
        ("wanda+gptq", {"prune": {"nm": "2:4"}, "quantize": {"bits": 4, "group": 128}}, NM, 2 + 1 + 0.125),
        ("magnitude+nf4", {"prune": {"sparsity": 0.75}, "quantize": {}}, NONE, 1 + 8 / 64 + 32 / (64 * 256)),
        ("magnitude+mxfp4", {"prune": {"sparsity": 0.5}, "quantize": {}}, BITMASK, 2 + 1 + 0.25),
    ],
)
def test_bits_per_weight_match_hand_formulas(name, params, convention, expected) -> None:
    assert get_method(name).bits_per_weight(params, SHAPE, convention) == pytest.approx(expected, rel=1e-12)


def test_int8_outlier_bits_count_the_arrays_that_store_it(layer) -> None:
    """The layer is int8 codes times one scale per row, plus the outlier columns as they were: stored as int8
    codes, fp16 scales, fp16 outlier columns and one ⌈log2 in⌉-bit index per outlier column, the bits these
    arrays hold per weight are the method's bits per weight."""
    weight, _, gram = layer
    params = {"outlier_fraction": 4 / 256}
    quantized = get_method("int8_outlier").apply(weight, gram, params).double()
    kept = (quantized == weight.double()).all(dim=0)
    regular = quantized[:, ~kept]
    scales = regular.abs().amax(dim=1, keepdim=True) / 127
    codes = torch.round(regular / scales)
    assert torch.allclose(scales * codes, regular, rtol=0, atol=1e-6) and codes.abs().max() == 127
    arrays = (codes.numpy().astype(np.int8), scales.numpy().astype(np.float16),
              weight[:, kept].numpy().astype(np.float16))  # fmt: skip
    index_bits = int(kept.sum()) * (weight.shape[1] - 1).bit_length()
    stored_bits = 8 * sum(array.nbytes for array in arrays) + index_bits
    assert int(kept.sum()) == 4
    bits = get_method("int8_outlier").bits_per_weight(params, tuple(weight.shape), NONE)
    assert bits == stored_bits / weight.numel()


CLAIMED_LEVELS = {
    "rtn": ("row", 2**4), "gptq": ("row", 2**4), "nf4": (64, 16), "mxfp4": (32, 16), "mxfp6_e3m2": (32, 64),
    "mxfp6_e2m3": (32, 64), "mxfp8_e4m3": (32, 256), "mxfp8_e5m2": (32, 256), "mxint8": (32, 256),
    "q4_k": (32, 16), "q3_k": (16, 8), "int8_outlier": ("row", 2**8 + 10), "splitquant": ("tensor", 3 * 2**4),
    "ternary": ("tensor", 3),
}  # fmt: skip
"""Inputs sharing one set of levels, and how many levels, at default parameters on a 1024-input layer
(int8_outlier: 255 codes per row plus its round(0.01 · 1024) = 10 fp16 columns; SplitQuant: three clusters). AWQ's
levels are shared in its scaled domain W·diag(s) (tests/measure/compress/test_methods_awq.py)."""


@pytest.mark.parametrize("name", [name for name in method_names("quantization") if name != "awq"])
def test_every_quantizer_uses_no_more_levels_than_it_claims(name) -> None:
    weight, _, gram = random_layer(rows=16, columns=1024)
    unit, levels = CLAIMED_LEVELS[name]
    quantized = get_method(name).apply(weight, gram)
    groups = {"row": quantized, "tensor": quantized.reshape(1, -1)}.get(unit)
    groups = quantized.reshape(-1, unit) if groups is None else groups
    assert max(torch.unique(group).numel() for group in groups) <= levels
    element_bits = get_method(name).element_bits(get_method(name).resolve({}), tuple(weight.shape))
    if float(element_bits).is_integer() and name not in ("splitquant", "int8_outlier"):
        assert levels == 2**element_bits


def test_kquant_pays_for_row_padding() -> None:
    assert get_method("q4_k").bits_per_weight({}, (8, 128), NONE) == pytest.approx(9.0)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("gptq", {"bits": 17}, "bits"),
        ("rtn", {"bits": 1}, "bits"),
        ("rtn", {"bits": 2.5}, "integer"),
        ("rtn", {"group": "row"}, "group"),
        ("rtn", {"clip": "percentile"}, "clip"),
        ("rtn", {"group_size": 128}, "no parameter 'group_size'"),
        ("magnitude", {"sparsity": 1.0}, "sparsity"),
        ("magnitude", {"sparsity": -0.1}, "sparsity"),
        ("magnitude", {"sparsity": float("nan")}, "sparsity"),
        ("wanda", {"nm": "4:2"}, "N:M"),
        ("wanda", {"nm": "two:four"}, "N:M"),
        ("wanda", {"nm": "2:4", "sparsity": 0.3}, "fixes the sparsity"),
        ("magnitude", {}, "give a sparsity"),
        ("head_prune", {"fraction": 0.5, "head_dim": 48}, "head_dim"),
        ("magnitude", {"nm": "2:3"}, "divisible"),
        ("gptq", {"percdamp": 2}, "percdamp"),
    ],
)
def test_bad_parameters_raise_clear_errors(layer, name, params, message) -> None:
    weight, _, gram = layer
    with pytest.raises(PvqError, match=message):
        get_method(name).apply(weight, gram, params)


def test_unknown_method_lists_the_valid_names() -> None:
    with pytest.raises(PvqError, match=r"valid names: magnitude, .*sparsegpt.*gptq"):
        get_method("obc")
    with pytest.raises(PvqError, match=r"PRUNING\+QUANTIZATION"):
        get_method("gptq+sparsegpt")
    with pytest.raises(PvqError, match="unknown compression method 'hqq'"):
        get_method("wanda+hqq")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_are_rejected(layer, bad) -> None:
    weight, _, gram = layer
    broken_weight, broken_gram = weight.clone(), gram.clone()
    broken_weight[3, 5] = bad
    broken_gram[2, 2] = bad
    with pytest.raises(PvqError, match="weight contains NaN or Inf"):
        get_method("rtn").apply(broken_weight)
    with pytest.raises(PvqError, match="Gram matrix contains NaN or Inf"):
        get_method("gptq").apply(weight, broken_gram)


def test_malformed_inputs_are_rejected(layer) -> None:
    weight, _, gram = layer
    with pytest.raises(PvqError, match="needs the Gram matrix"):
        get_method("sparsegpt").apply(weight, None, {"sparsity": 0.5})
    with pytest.raises(PvqError, match="needs the Gram matrix"):
        get_method("sparsegpt+rtn").apply(weight, None, {"prune": {"sparsity": 0.5}})
    with pytest.raises(PvqError, match="256×256"):
        get_method("wanda").apply(weight, gram[:10, :10], {"sparsity": 0.5})
    with pytest.raises(PvqError, match="2-D"):
        get_method("rtn").apply(weight[0])
    with pytest.raises(PvqError, match="float32 or float64"):
        get_method("rtn").apply(weight.half())
    with pytest.raises(PvqError, match="not positive definite"):
        get_method("gptq").apply(weight, -torch.eye(256, dtype=torch.float64))
    with pytest.raises(PvqError, match="shape"):
        get_method("rtn").bits_per_weight({}, (64,))
