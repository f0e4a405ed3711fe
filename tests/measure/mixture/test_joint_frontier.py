"""The joint frontier: grid specs, Pareto flags against brute force, sizes against a direct parameter count,
removal-then-quantization that reloads, and the table on a tiny model."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from tiny_inputs import token_batches
from tiny_models import tiny_model, tiny_tokenizer
from transformers import AutoModelForCausalLM

from measure.capture.statistics import capture
from measure.compress.apply import apply_spec
from measure.evaluation.perplexity import evaluate_perplexity, make_windows
from measure.mixture.joint_frontier import (
    COLUMNS,
    compressed_size,
    joint_frontier_table,
    layer_coordinates,
    pareto_flags,
)
from measure.mixture.joint_grid import frontier_specs
from measure.models.architecture import describe
from measure.removal.study import decoder_sizes
from theory.accounting import binary_entropy_bits
from theory.errors import PvqError

TEXT = "The history of the calibration text is long, and it is real English prose. " * 20
TINY_SPECS = ["gptq:4:g16", "sparsegpt:0.5+gptq:4:g16", "sparsegpt:2:4+gptq:3:g16", "remove:bi:1+gptq:8:g16"]


def _windows():
    return make_windows(TEXT, tiny_tokenizer(), 32, bos_token_id=1, max_windows=2)


def _dominated(i: int, sizes: np.ndarray, losses: np.ndarray) -> bool:
    return any(
        sizes[j] <= sizes[i] and losses[j] <= losses[i] and (sizes[j] < sizes[i] or losses[j] < losses[i])
        for j in range(len(sizes))
    )


@pytest.mark.parametrize("seed", range(6))
def test_pareto_flags_equal_a_brute_force_dominance_check(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 6, 40).astype(float)  # few distinct values: ties in size, loss and both
    losses = rng.integers(0, 6, 40).astype(float)
    expected = [not _dominated(i, sizes, losses) for i in range(40)]
    assert pareto_flags(sizes, losses).tolist() == expected
    assert any(expected) and not all(expected)


def test_pareto_flags_refuse_nan_and_mismatched_lengths() -> None:
    with pytest.raises(PvqError, match="same length"):
        pareto_flags([1.0, 2.0], [1.0])
    with pytest.raises(PvqError, match="NaN"):
        pareto_flags([1.0, math.nan], [1.0, 2.0])


def test_the_full_grid_lists_every_joint_and_removal_point_once() -> None:
    specs = frontier_specs()
    assert len(specs) == 6 * 4 + 4 * 3 - 3 == len(set(specs))
    assert specs[:4] == [f"gptq:{b}:g128" for b in (2, 3, 4, 8)]
    assert "sparsegpt:0.625+gptq:2:g128" in specs and "sparsegpt:2:4+gptq:8:g128" in specs
    assert specs[-1] == "remove:bi:6+gptq:8:g128"
    assert layer_coordinates("sparsegpt:2:4+gptq:3:g128") == {"sparsity": 0.5, "pattern": "2:4", "bits": 3}
    assert layer_coordinates("remove:bi:2+gptq:8:g128") == {"sparsity": 0.0, "pattern": "none", "bits": 8}
    assert layer_coordinates("sparsegpt:0.25") == {"sparsity": 0.25, "pattern": "unstructured", "bits": 16}
    for bad in ("nf4", "row_prune:0.5+gptq:4", "remove:bi:2"):
        with pytest.raises(PvqError, match="frontier spec"):
            layer_coordinates(bad)
    with pytest.raises(PvqError, match="sparsities"):
        frontier_specs(sparsities=[1.0])
    with pytest.raises(PvqError, match="removed block counts"):
        frontier_specs(removed_blocks=[-1])


def _direct_bits_per_decoder_parameter(
    original: torch.nn.Module, kept: list[int], bits: int, group: int, sparsity: float, entropy: bool
) -> float:
    """Σ over the original decoder's parameters: 0 in removed blocks; a linear weight of a kept block costs
    (1 − s)·b + [H(s)] per weight + 16 bits per scale group; anything else 16 bits; over the decoder's count."""
    arch = describe(original)
    total_bits, decoder = 0.0, 0
    for index, block in enumerate(arch.blocks):
        linear = {id(ref.module.weight): ref for ref in block.linears}
        for parameter in block.module.parameters():
            decoder += parameter.numel()
            if index not in kept:
                continue
            ref = linear.get(id(parameter))
            if ref is None:
                total_bits += 16 * parameter.numel()
                continue
            count = ref.out_features * ref.in_features
            realized = round(sparsity * count) / count
            per_weight = (1 - realized) * bits + (binary_entropy_bits(realized) if entropy else 0.0)
            total_bits += per_weight * count + 16 * ref.out_features * math.ceil(ref.in_features / group)
    return total_bits / decoder


@pytest.mark.parametrize(
    ("spec", "bits", "sparsity"),
    [("remove:bi:1+gptq:4:g16", 4, 0.0), ("sparsegpt:0.5+gptq:3:g16", 3, 0.5), ("rtn:8:g16", 8, 0.0)],
)
def test_sizes_equal_a_direct_count_of_the_original_decoder_parameters(spec: str, bits: int, sparsity: float):
    model = tiny_model("llama")
    compressed = copy.deepcopy(model)
    report = apply_spec(compressed, spec, token_batches(6, length=32))
    removed = report.model_steps[0]["removal"]["blocks"] if report.model_steps else []
    kept = [i for i in range(len(describe(model).blocks)) if i not in removed]
    assert len(describe(compressed).blocks) == len(kept) == 2 - ("remove" in spec)
    original = decoder_sizes(describe(model))
    for convention in ("free", "entropy"):
        expected = _direct_bits_per_decoder_parameter(model, kept, bits, 16, sparsity, convention == "entropy")
        assert compressed_size(original, compressed, spec, convention) == pytest.approx(expected, rel=1e-12)


def test_removal_then_quantization_reloads_with_from_pretrained(tmp_path) -> None:
    model = tiny_model("llama")
    report = apply_spec(model, "remove:bi:1+gptq:4:g16", token_batches(6, length=32))
    assert len(report.model_steps[0]["removal"]["blocks"]) == 1 and len(describe(model).blocks) == 1
    assert set(report.layers["block"]) == {0} and len(report.layers) == len(describe(model).linears)
    model.save_pretrained(tmp_path / "short")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "short").eval()
    ids = token_batches(6, length=32)[0]
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)
    for ref in describe(reloaded).linears:
        groups = ref.weight().reshape(-1, 16)
        assert max(torch.unique(group).numel() for group in groups) <= 16


@pytest.mark.parametrize("quantizer", ["gptq", "rtn", "awq"])
@pytest.mark.parametrize("pattern", ["0.5", "2:4"])
def test_quantization_after_pruning_keeps_every_pruned_weight_at_zero(quantizer: str, pattern: str) -> None:
    model = tiny_model("llama")
    batches = token_batches(6, length=32)
    grams = capture(model, batches)
    pruned, joint = copy.deepcopy(model), copy.deepcopy(model)
    apply_spec(pruned, f"sparsegpt:{pattern}", batches, calibration="parallel", captured=grams)
    apply_spec(joint, f"sparsegpt:{pattern}+{quantizer}:4:g16", batches, calibration="parallel", captured=grams)
    for mask_ref, joint_ref in zip(describe(pruned).linears, describe(joint).linears, strict=True):
        zeros = mask_ref.weight() == 0
        count = mask_ref.out_features * mask_ref.in_features
        assert int(zeros.sum()) == round(0.5 * count)
        assert torch.equal(joint_ref.weight()[zeros], torch.zeros(int(zeros.sum())))
        assert int((joint_ref.weight() != 0).sum()) <= count - int(zeros.sum())
        assert int((joint_ref.weight() != 0).sum()) > 0.9 * (count - int(zeros.sum()))


def test_the_table_on_a_tiny_model_has_its_columns_flags_and_leaves_the_model_unchanged() -> None:
    model = tiny_model("llama")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    windows = _windows()
    table = joint_frontier_table(
        model, token_batches(6, length=32), windows, TINY_SPECS,
        captured=capture(model, token_batches(6, length=32)),
    )
    assert list(table.columns) == COLUMNS and table["spec"].tolist() == TINY_SPECS
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters())
    assert table["removed_blocks"].tolist() == [0, 0, 0, 1]
    assert table["base_ppl"].iloc[0] == pytest.approx(evaluate_perplexity(model, windows).perplexity, rel=1e-9)
    assert (table["kl"] > 0).all() and (table["ppl"] > 0).all()
    for name in ("free", "entropy"):
        sizes, losses = table[f"bits_per_decoder_parameter_{name}"].to_numpy(), table["kl"].to_numpy()
        assert table[f"pareto_{name}"].tolist() == [not _dominated(i, sizes, losses) for i in range(len(table))]
    entropy_extra = table["bits_per_decoder_parameter_entropy"] - table["bits_per_decoder_parameter_free"]
    assert (entropy_extra[table["sparsity"] > 0] > 0).all() and (entropy_extra[table["sparsity"] == 0] == 0).all()
