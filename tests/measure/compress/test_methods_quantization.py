"""Quantization methods meet their definitions: values on their grids, GPTQ = textbook OBQ, error orderings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from method_toys import OUTLIER_COLUMNS, naive_obs, random_layer
from scipy.cluster.vq import kmeans2

from measure.compress.methods import get_method
from measure.compress.methods.metrics import output_error
from theory import formats
from theory.accounting import Convention


@pytest.fixture(scope="module")
def layer():
    return random_layer()


def rows_in_groups(values: torch.Tensor, group: int) -> torch.Tensor:
    """``(rows·groups, g)`` view of consecutive input columns."""
    return values.reshape(values.shape[0], -1, group).reshape(-1, group)


def assert_on_lattice(groups: torch.Tensor, levels: int) -> None:
    """Each group's values lie on one lattice ``s·ℤ`` containing 0 and span at most ``levels`` points.

    The step s is the smallest gap between a group's distinct values (every level pair is present in
    the test groups, which hold several values per level).
    """
    for values in groups.double():
        distinct = torch.unique(values)
        if distinct.numel() == 1:
            continue
        step = distinct.diff().min()
        codes = distinct / step
        assert torch.allclose(codes, codes.round(), atol=1e-4), "values off a uniform lattice through 0"
        assert float(codes.max() - codes.min()) <= levels - 1 + 1e-4


def weight_mse(weight: torch.Tensor, weight_hat: torch.Tensor) -> float:
    return float((weight_hat.double() - weight.double()).square().mean())


def reference_rtn(values: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    """Min-max RTN of one group, written out. Symmetric, the convention of GPTQ's reference quantizer:
    ``s = 2·max|w|/(2^b − 1)``, ``z = 2^(b−1)``, codes ``0..2^b − 1``; asymmetric range
    ``[min(w,0), max(w,0)]``, ``s = range/(2^b − 1)``, ``z = −round(lo/s)``, codes in ``0..2^b − 1``."""
    if symmetric:
        scale = 2 * values.abs().max() / (2**bits - 1)
        zero = 2 ** (bits - 1)
        return scale * (torch.clamp(torch.round(values / scale) + zero, 0, 2**bits - 1) - zero)
    low, high = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
    scale = (high - low) / (2**bits - 1)
    zero = -round(low / scale)
    return scale * (torch.clamp(torch.round(values / scale) + zero, 0, 2**bits - 1) - zero)


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_a_symmetric_row_reaches_all_two_to_the_b_levels(bits: int, method: str) -> None:
    """A row spanning ``[−1, 1]`` (absmax 1, a power of two, so ``−1/s = −(2^(b−1) − ½)`` is exact and rounds
    half-to-even onto the bottom code) takes exactly ``2^b`` distinct values, ``s·{−2^(b−1), …, 2^(b−1) − 1}``."""
    row = torch.linspace(-1.0, 1.0, 2049, dtype=torch.float64)[None, :]
    quantized = get_method(method).apply(row, torch.eye(row.shape[1], dtype=torch.float64), {"bits": bits})
    scale = 2 / (2**bits - 1)
    levels = torch.arange(-(2 ** (bits - 1)), 2 ** (bits - 1), dtype=torch.float64) * scale
    assert torch.allclose(torch.unique(quantized), levels, rtol=0, atol=1e-12)


def test_the_bottom_symmetric_code_holds_only_a_negative_absmax() -> None:
    """With a positive absmax no value reaches ``−2^(b−1)·s``: the lowest level used is ``−(2^(b−1) − 1)·s``."""
    row = torch.tensor([[-0.9, -0.5, 0.0, 0.4, 1.0]], dtype=torch.float64)
    quantized = get_method("rtn").apply(row, None, {"bits": 2})
    assert torch.allclose(quantized, torch.tensor([[-2 / 3, -2 / 3, 0.0, 2 / 3, 2 / 3]], dtype=torch.float64))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group", [32, 128, "channel", "tensor"])
def test_rtn_minmax_matches_hand_formula(layer, bits, symmetric, group) -> None:
    weight, _, _ = layer
    quantized = get_method("rtn").apply(weight, None, {"bits": bits, "group": group, "symmetric": symmetric})
    size = {"channel": 128, "tensor": weight.numel()}.get(group, group)
    expected = torch.stack([reference_rtn(g, bits, symmetric) for g in weight.double().reshape(-1, size)])
    assert torch.allclose(quantized.double(), expected.reshape(weight.shape), atol=1e-5)


def test_rtn_handles_a_partial_last_group() -> None:
    weight, _, _ = random_layer(rows=8, columns=100)
    quantized = get_method("rtn").apply(weight, None, {"bits": 4, "group": 32, "symmetric": False}).double()
    for row, original in zip(quantized, weight.double(), strict=True):
        expected = torch.cat([reference_rtn(chunk, 4, False) for chunk in original.split(32)])
        assert torch.allclose(row, expected, atol=1e-5)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("clip", ["minmax", "mse"])
def test_rtn_values_on_the_grid_per_group(layer, symmetric, clip) -> None:
    weight, _, _ = layer
    quantized = get_method("rtn").apply(
        weight, None, {"bits": 3, "group": 32, "symmetric": symmetric, "clip": clip}
    )
    assert_on_lattice(rows_in_groups(quantized, 32), 8)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group", [16, "channel", "tensor"])
def test_mse_clipping_never_worse_than_minmax(layer, symmetric, group) -> None:
    weight, _, _ = layer
    errors = {
        clip: weight_mse(
            weight,
            get_method("rtn").apply(
                weight, None, {"bits": 3, "group": group, "symmetric": symmetric, "clip": clip}
            ),
        )
        for clip in ("minmax", "mse")
    }
    assert errors["mse"] <= errors["minmax"]


def test_mse_clipping_helps_heavy_tails() -> None:
    """Student-t (3 degrees of freedom) weights: clipping the rare large values pays off at 3 bits (a quarter less
    weight MSE than min-max on the symmetric grid)."""
    generator = torch.Generator().manual_seed(0)
    normal = torch.randn(32, 256, generator=generator)
    chi_square = torch.randn(32, 256, 3, generator=generator).square().sum(dim=-1)
    weight = normal / (chi_square / 3).sqrt()
    errors = [
        weight_mse(weight, get_method("rtn").apply(weight, None, {"bits": 3, "clip": c}))
        for c in ("minmax", "mse")
    ]
    assert errors[1] < 0.78 * errors[0]


def grid_quantizer(bits: int, symmetric: bool, group, clip: str = "minmax", act_order: bool = False) -> dict:
    return {"bits": bits, "symmetric": symmetric, "group": group, "clip": clip, "act_order": act_order}


@pytest.mark.parametrize(("bits", "act_order"), [(2, True), (3, False), (3, True), (4, False), (4, True)])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group", [32, "channel", "tensor"])
@pytest.mark.parametrize("clip", ["minmax", "mse"])
def test_gptq_error_at_most_rtn_on_the_same_grid(layer, bits, act_order, symmetric, group, clip) -> None:
    """(At 2 bits with groups of 32 and min-max, GPTQ without act-order is not always better: the error
    feedback widens the later groups' ranges; act-order fixes the outlier columns first.)"""
    weight, _, gram = layer
    params = grid_quantizer(bits, symmetric, group, clip, act_order)
    rtn = get_method("rtn").apply(weight, None, {k: v for k, v in params.items() if k != "act_order"})
    gptq = get_method("gptq").apply(weight, gram, params)
    assert output_error(weight, gptq, gram)[0] <= output_error(weight, rtn, gram)[0]


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_values_on_the_grid_per_original_group(layer, act_order, symmetric) -> None:
    weight, _, gram = layer
    quantized = get_method("gptq").apply(weight, gram, grid_quantizer(3, symmetric, 32, act_order=act_order))
    assert_on_lattice(rows_in_groups(quantized, 32), 8)


def test_gptq_matches_textbook_obq(layer) -> None:
    """Per-channel symmetric grid (GPTQ convention ``s = 2·max|w|/7``, z = 4), fixed from W: the blocked Cholesky
    sweep equals the plain OBQ loop."""
    weight, _, gram = layer
    weight = weight.double()
    gptq = get_method("gptq").apply(weight, gram, {"bits": 3, "block_size": 16, "percdamp": 0.05})
    scale = 2 * weight.abs().amax(dim=1) / 7

    def on_grid(column: int, values: torch.Tensor) -> torch.Tensor:
        return scale * (torch.clamp(torch.round(values / scale) + 4, 0, 7) - 4)

    expected = naive_obs(weight, gram, on_grid, 0.05)
    assert torch.allclose(gptq, expected, rtol=0, atol=1e-9)


def test_gptq_lazy_batches_do_not_change_the_result(layer) -> None:
    """On the asymmetric grid: the symmetric one puts a negative absmax on a rounding tie (``−(2^(b−1) − ½)·s``),
    which the ulp-level differences between lazy and immediate updates may break either way."""
    weight, _, gram = layer
    results = [
        get_method("gptq").apply(
            weight.double(), gram, {"bits": 4, "group": 32, "symmetric": False, "block_size": size}
        )
        for size in (1, 7, 128)
    ]
    assert torch.allclose(results[0], results[1], atol=1e-10) and torch.allclose(
        results[0], results[2], atol=1e-10
    )


def test_gptq_act_order_is_gptq_on_permuted_columns(layer) -> None:
    weight, _, gram = layer
    order = torch.argsort(torch.diagonal(gram), descending=True, stable=True)
    acted = get_method("gptq").apply(weight.double(), gram, grid_quantizer(3, True, "channel", act_order=True))
    permuted = get_method("gptq").apply(
        weight.double()[:, order], gram[order][:, order], grid_quantizer(3, True, "channel")
    )
    assert torch.allclose(acted[:, order], permuted, atol=1e-10)
    assert set(order[: len(OUTLIER_COLUMNS)].tolist()) == set(OUTLIER_COLUMNS)


def test_nf4_values_are_block_absmax_times_nf4_levels(layer) -> None:
    weight, _, _ = layer
    levels = torch.from_numpy(formats.nf4_values())
    for double_quant in (False, True):
        quantized = get_method("nf4").apply(weight, None, {"double_quant": double_quant}).double()
        blocks = rows_in_groups(quantized, 64)
        normalized = blocks / blocks.abs().amax(dim=1, keepdim=True)
        assert (normalized[..., None] - levels).abs().min(dim=-1).values.max() < 1e-6
        if not double_quant:
            absmax = rows_in_groups(weight.double(), 64).abs().amax(dim=1)
            assert torch.allclose(blocks.abs().amax(dim=1), absmax, rtol=1e-6)


MX_ELEMENTS = {
    "mxint8": ("int8", np.arange(-128, 128) / 64.0),
    "mxfp8_e4m3": ("fp8_e4m3", formats.fp_values(4, 3)),
    "mxfp8_e5m2": ("fp8_e5m2", formats.fp_values(5, 2)),
    "mxfp6_e3m2": ("fp6_e3m2", formats.fp_values(3, 2)),
    "mxfp6_e2m3": ("fp6_e2m3", formats.fp_values(2, 3)),
    "mxfp4": ("fp4_e2m1", formats.fp_values(2, 1)),
}


@pytest.mark.parametrize("name", MX_ELEMENTS)
def test_mx_values_are_power_of_two_scale_times_elements(layer, name) -> None:
    """Per 32 inputs: ``X = 2^(⌊log2 max|v|⌋ − emax)``, every value in ``X·elements`` (OCP MX v1.0 §6.3)."""
    weight, _, _ = layer
    _, values = MX_ELEMENTS[name]
    quantized = rows_in_groups(get_method(name).apply(weight, None).double(), 32)
    original = rows_in_groups(weight.double(), 32)
    emax = math.floor(math.log2(values.max()))
    scale = 2.0 ** (torch.floor(torch.log2(original.abs().amax(dim=1, keepdim=True))) - emax)
    distance = (quantized / scale)[..., None] - torch.from_numpy(values)
    assert distance.abs().min(dim=-1).values.max() < 1e-9


def test_ternary_is_absmean_times_minus_one_zero_one(layer) -> None:
    weight, _, _ = layer
    quantized = get_method("ternary").apply(weight, None).double()
    gamma = weight.double().abs().mean()
    expected = gamma * torch.clamp(torch.round(weight.double() / gamma), -1, 1)
    assert torch.allclose(quantized, expected, atol=1e-6)
    assert set(torch.unique(torch.round(quantized / gamma)).tolist()) == {-1.0, 0.0, 1.0}


def _six_bit_codes(values: np.ndarray, step: np.float16, low: int, high: int) -> np.ndarray:
    """``clip(rint(v / step), low, high)`` against an fp16 super-block constant (0 where step = 0)."""
    return np.clip(np.rint(values / (float(step) or 1.0)), low, high)


def _signed_extreme(values: np.ndarray) -> np.ndarray:
    """The element of largest magnitude along the last axis, with its sign."""
    return np.take_along_axis(values, np.abs(values).argmax(axis=-1)[..., None], axis=-1)[..., 0]


def q4_k_block(block: np.ndarray) -> bytes:
    """One ggml ``block_q4_K`` (``ggml-common.h``: fp16 d, fp16 dmin, 12 bytes of 6-bit scales and mins, 128
    bytes of nibbles) of 256 weights, with the min-max sub-block ranges :mod:`measure.compress.methods.kquant`
    documents
    (codes computed in float64, as pvq computes)."""
    subs = block.reshape(8, 32)
    mins = -np.minimum(subs.min(axis=1), 0)
    ranges = (subs.max(axis=1) + mins) / 15
    d, dmin = np.float16(ranges.max() / 63), np.float16(mins.max() / 63)
    sc, m = _six_bit_codes(ranges, d, 0, 63), _six_bit_codes(mins, dmin, 0, 63)
    step, offset = float(d) * sc, float(dmin) * m
    q = np.clip(np.rint((subs + offset[:, None]) / np.where(step > 0, step, 1)[:, None]), 0, 15).astype(np.uint8)
    sc, m = sc.astype(np.uint8), m.astype(np.uint8)
    # bytes 0-3: sc 0-3 and the top bits of sc 4-7; 4-7: m 0-3 and the top bits of m 4-7; 8-11: low bits of 4-7
    sc_top, m_top = sc[4:] >> 4 << 6, m[4:] >> 4 << 6
    scales = np.concatenate([sc[:4] | sc_top, m[:4] | m_top, (sc[4:] & 15) | (m[4:] & 15) << 4])
    pairs = q.reshape(4, 2, 32)  # bytes 32c..32c+31 hold sub-block 2c in the low and 2c+1 in the high nibble
    nibbles = (pairs[:, 0] | pairs[:, 1] << 4).reshape(-1)
    return d.tobytes() + dmin.tobytes() + scales.astype(np.uint8).tobytes() + nibbles.tobytes()


def q3_k_block(block: np.ndarray) -> bytes:
    """One ggml ``block_q3_K`` (32 bytes of high bits, 64 bytes of 2-bit pairs, 12 bytes of 6-bit scales stored
    as sc + 32, fp16 d) of 256 weights, with signed-extreme scales at both levels."""
    subs = block.reshape(16, 16)
    scales = -_signed_extreme(subs) / 4
    d = np.float16(-_signed_extreme(scales) / 32)
    sc = _six_bit_codes(scales, d, -32, 31)
    step = float(d) * sc
    q = np.clip(np.rint(subs / np.where(step != 0, step, 1)[:, None]), -4, 3)
    stored, shifted = (sc + 32).astype(np.uint8), (q + 4).astype(np.uint8).reshape(-1)
    packed_scales = np.zeros(12, dtype=np.uint8)
    for j in range(16):  # low nibble of scale j in byte j % 8 (high half for j >= 8), top 2 bits in byte 8 + j % 4
        packed_scales[j % 8] |= (stored[j] & 15) << (4 * (j // 8))
        packed_scales[8 + j % 4] |= (stored[j] >> 4) << (2 * (j // 4))
    low = (shifted & 3).reshape(2, 4, 32)  # weight 128c + 32s + l: bits 2s..2s+1 of byte 32c + l
    pairs = low[:, 0] | low[:, 1] << 2 | low[:, 2] << 4 | low[:, 3] << 6
    high = (shifted >> 2).reshape(8, 32)  # weight 32b + l: bit b of byte l (set for codes 0..3)
    hmask = np.bitwise_or.reduce(high << np.arange(8, dtype=np.uint8)[:, None], axis=0)
    return hmask.astype(np.uint8).tobytes() + pairs.reshape(-1).tobytes() + packed_scales.tobytes() + d.tobytes()


GGUF_ENCODERS = {"q4_k": (q4_k_block, GGMLQuantizationType.Q4_K), "q3_k": (q3_k_block, GGMLQuantizationType.Q3_K)}


@pytest.mark.parametrize("layout", ["q4_k", "q3_k"])
@pytest.mark.parametrize("columns", [512, 300])
def test_kquant_equals_its_gguf_blocks_decoded_by_gguf(layout, columns) -> None:
    """Pack the codes into real GGUF blocks, decode them with ``gguf.quants.dequantize``: pvq's weights exactly,
    at the bits per weight of the block layout (rows zero-padded to a multiple of 256)."""
    weight = torch.randn(4, columns, generator=torch.Generator().manual_seed(3))
    encode, gguf_type = GGUF_ENCODERS[layout]
    padded = np.zeros((4, -(-columns // 256) * 256))
    padded[:, :columns] = weight.double().numpy()
    packed = np.frombuffer(b"".join(encode(block) for block in padded.reshape(-1, 256)), dtype=np.uint8)
    block_size, type_size = GGML_QUANT_SIZES[gguf_type]
    assert packed.size == padded.size // block_size * type_size
    decoded = gguf_dequantize(packed.reshape(4, -1), gguf_type)
    np.testing.assert_array_equal(get_method(layout).apply(weight, None).numpy(), decoded[:, :columns])
    bits = get_method(layout).bits_per_weight({}, tuple(weight.shape), Convention("none"))
    assert bits == pytest.approx(8 * packed.size / weight.numel(), rel=1e-12)


def test_int8_outlier_keeps_outlier_columns_and_rounds_the_rest(layer) -> None:
    weight, _, gram = layer
    quantized = get_method("int8_outlier").apply(weight, gram, {"outlier_fraction": 4 / 128})
    outliers = list(OUTLIER_COLUMNS)
    assert torch.equal(quantized[:, outliers], weight[:, outliers])
    regular = [c for c in range(128) if c not in OUTLIER_COLUMNS]
    rest, original = quantized[:, regular].double(), weight[:, regular].double()
    scale = original.abs().amax(dim=1, keepdim=True) / 127
    assert torch.allclose(rest, scale * torch.round(original / scale), atol=1e-6)
    quantized_everything = get_method("int8_outlier").apply(weight, gram, {"outlier_fraction": 0})
    assert output_error(weight, quantized, gram)[0] < output_error(weight, quantized_everything, gram)[0]


def test_splitquant_is_the_sum_of_three_separately_quantized_clusters(layer) -> None:
    """Clusters from scipy's Lloyd iteration (``kmeans2``, started at the (c + ½)/3 quantiles), each cluster's
    part (zeros elsewhere) rounded by the written-out min-max RTN over the whole tensor."""
    weight, _, _ = layer
    params = {"bits": 3, "group": "tensor", "symmetric": False}
    quantized = get_method("splitquant").apply(weight, None, params).double()
    values = weight.double().numpy().ravel()
    start = np.sort(values)[((np.arange(3) + 0.5) / 3 * values.size).astype(int)]
    centroids, labels = kmeans2(values, start, iter=100, minit="matrix")
    labels = torch.from_numpy(np.argsort(np.argsort(centroids))[labels].reshape(weight.shape))
    parts = [torch.where(labels == c, weight.double(), 0.0) for c in range(3)]
    expected = sum(reference_rtn(part.reshape(-1), 3, symmetric=False).reshape(weight.shape) for part in parts)
    assert torch.allclose(quantized, expected, atol=1e-6)
    for c, part in enumerate(parts):
        assert_on_lattice(torch.where(labels == c, quantized, 0.0).reshape(1, -1), 8)
        assert (part[labels == c] < 0).all() or (part[labels == c] > 0).all() or c == 1
    assert weight_mse(weight, quantized) < 0.5 * weight_mse(weight, get_method("rtn").apply(weight, None, params))


def test_kmeans_labels_are_three_contiguous_value_ranges() -> None:
    from measure.compress.methods.quantization import kmeans_1d_labels

    values = torch.cat([torch.randn(300) - 10, torch.randn(300), torch.randn(300) + 10]).double()
    labels = kmeans_1d_labels(values[torch.randperm(900)], 3)
    assert torch.bincount(labels).tolist() == [300, 300, 300]
    labels = kmeans_1d_labels(values, 3)
    assert torch.equal(labels, torch.arange(3).repeat_interleave(300))


def test_prune_then_quantize_keeps_the_mask_and_the_grid(layer) -> None:
    weight, _, gram = layer
    params = {"prune": {"sparsity": 0.5}, "quantize": {"bits": 4, "group": 32}}
    joint = get_method("sparsegpt+gptq").apply(weight, gram, params)
    pruned = get_method("sparsegpt").apply(weight, gram, {"sparsity": 0.5})
    assert (joint[pruned == 0] == 0).all()
    assert_on_lattice(rows_in_groups(joint, 32), 16)
    simple = get_method("magnitude+rtn").apply(weight, gram, params)
    magnitude = get_method("magnitude").apply(weight, gram, {"sparsity": 0.5})
    assert (simple[magnitude == 0] == 0).all()
    assert_on_lattice(rows_in_groups(simple, 32), 16)
    assert output_error(weight, joint, gram)[0] < output_error(weight, simple, gram)[0]


def test_a_dead_input_is_plain_rtn_and_gptq_still_beats_rtn_on_the_live_ones(layer) -> None:
    """An input never active on the calibration data (H_jj = 0) is decoupled: its weights are plain RTN on the
    grid, and GPTQ still lowers the output error of the live inputs below RTN's."""
    weight, _, gram = layer
    dead = gram.clone()
    dead[7, :] = dead[:, 7] = 0
    params = {"bits": 4, "group": 32, "symmetric": True}
    rtn = get_method("rtn").apply(weight, None, params)
    for act_order in (False, True):
        quantized = get_method("gptq").apply(weight, dead, {**params, "act_order": act_order})
        expected = torch.stack([reference_rtn(g, 4, True) for g in weight.double()[:, :32]])[:, 7]
        assert torch.allclose(quantized[:, 7].double(), expected, rtol=0, atol=1e-6)
        assert_on_lattice(rows_in_groups(quantized, 32), 16)
        assert output_error(weight, quantized, dead)[0] < 0.6 * output_error(weight, rtn, dead)[0]
