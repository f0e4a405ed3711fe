"""Pruning methods meet their definitions: exact sparsity, N:M patterns, scores, OBS reconstruction."""

from __future__ import annotations

import pytest
import torch
from method_toys import naive_obs, random_layer

from measure.compress.methods import get_method
from measure.compress.methods.metrics import output_error
from measure.compress.methods.pruning import lowest_scores_mask

SCORE_PRUNERS = ("magnitude", "magnitude_row", "wanda", "moe_pruner", "sparsegpt")


@pytest.fixture(scope="module")
def layer():
    return random_layer()


@pytest.mark.parametrize("name", SCORE_PRUNERS)
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.77])
def test_sparsity_is_exact(layer, name, sparsity) -> None:
    weight, _, gram = layer
    pruned = get_method(name).apply(weight, gram, {"sparsity": sparsity})
    assert pruned.dtype == weight.dtype and pruned.shape == weight.shape
    if name in ("magnitude_row", "wanda", "moe_pruner"):
        assert ((pruned == 0).sum(dim=1) == round(sparsity * 128)).all()
    else:
        assert int((pruned == 0).sum()) == round(sparsity * weight.numel())


@pytest.mark.parametrize("name", ("magnitude", "magnitude_row", "wanda", "moe_pruner"))
def test_score_pruners_keep_weights_unchanged(layer, name) -> None:
    weight, _, gram = layer
    pruned = get_method(name).apply(weight, gram, {"sparsity": 0.5})
    kept = pruned != 0
    assert torch.equal(pruned[kept], weight[kept])


@pytest.mark.parametrize("name", SCORE_PRUNERS)
@pytest.mark.parametrize("nm", [(2, 4), (4, 8), (1, 4)])
def test_nm_pattern_holds(layer, name, nm) -> None:
    weight, _, gram = layer
    n, m = nm
    pruned = get_method(name).apply(weight, gram, {"nm": f"{n}:{m}"})
    nonzero_per_group = (pruned != 0).reshape(64, 128 // m, m).sum(dim=-1)
    assert (nonzero_per_group == n).all()


def test_magnitude_prunes_the_smallest_weights(layer) -> None:
    weight, _, _ = layer
    pruned = get_method("magnitude").apply(weight, None, {"sparsity": 0.5})
    assert weight.abs()[pruned == 0].max() <= weight.abs()[pruned != 0].min()
    per_row = get_method("magnitude_row").apply(weight, None, {"sparsity": 0.5})
    for row, original in zip(per_row, weight, strict=True):
        assert original.abs()[row == 0].max() <= original.abs()[row != 0].min()


def test_wanda_scores_use_column_activation_norms(layer) -> None:
    weight, inputs, gram = layer
    pruned = get_method("wanda").apply(weight, gram, {"sparsity": 0.5})
    scores = weight.double().abs() * inputs.norm(dim=0)
    for row_scores, row in zip(scores, pruned, strict=True):
        assert row_scores[row == 0].max() <= row_scores[row != 0].min()


def test_moe_pruner_uses_the_router_weighted_gram(layer) -> None:
    weight, inputs, _ = layer
    gate = torch.rand(inputs.shape[0], generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    router_gram = (inputs * gate[:, None] ** 2).T @ inputs
    pruned = get_method("moe_pruner").apply(weight, router_gram, {"sparsity": 0.5})
    scores = weight.double().abs() * (inputs * gate[:, None]).norm(dim=0)
    for row_scores, row in zip(scores, pruned, strict=True):
        assert row_scores[row == 0].max() <= row_scores[row != 0].min()


def test_wanda_beats_magnitude_with_outlier_columns(layer) -> None:
    weight, _, gram = layer
    errors = {
        name: output_error(weight, get_method(name).apply(weight, gram, {"sparsity": 0.5}), gram)[0]
        for name in ("magnitude", "magnitude_row", "wanda", "sparsegpt")
    }
    assert errors["wanda"] < errors["magnitude"]
    assert errors["wanda"] < errors["magnitude_row"]
    assert errors["sparsegpt"] <= errors["magnitude"]
    assert errors["sparsegpt"] <= errors["wanda"]


@pytest.mark.parametrize("nm", ["2:4", "4:8"])
def test_sparsegpt_nm_beats_magnitude_nm(layer, nm) -> None:
    weight, _, gram = layer
    sparsegpt = get_method("sparsegpt").apply(weight, gram, {"nm": nm})
    magnitude = get_method("magnitude").apply(weight, gram, {"nm": nm})
    assert output_error(weight, sparsegpt, gram)[0] <= output_error(weight, magnitude, gram)[0]


def test_sparsegpt_matches_textbook_obs_with_its_mask(layer) -> None:
    """One block (block_size ≥ in): the mask is chosen once from ``w² / [(H_{j:,j:})⁻¹]_00``, then plain OBS."""
    weight, _, gram = layer
    sparsity, percdamp = 0.6, 0.01
    pruned = get_method("sparsegpt").apply(
        weight.double(), gram, {"sparsity": sparsity, "block_size": 128, "percdamp": percdamp}
    )
    damped = gram + percdamp * torch.diagonal(gram).mean() * torch.eye(128, dtype=torch.float64)
    trailing = torch.stack([torch.linalg.inv(damped[j:, j:])[0, 0] for j in range(128)])
    saliency = weight.double() ** 2 / trailing[None, :]
    order = torch.argsort(saliency.reshape(-1), stable=True)
    keep = torch.ones(weight.numel(), dtype=torch.bool)
    keep[order[: round(sparsity * weight.numel())]] = False
    keep = keep.reshape(weight.shape)
    expected = naive_obs(weight, gram, lambda j, w: w * keep[:, j], percdamp)
    assert torch.allclose(pruned, expected, rtol=0, atol=1e-9)


def test_sparsegpt_handles_dead_inputs(layer) -> None:
    weight, _, gram = layer
    dead = gram.clone()
    dead[5, :] = dead[:, 5] = 0
    pruned = get_method("sparsegpt").apply(weight, dead, {"sparsity": 0.5})
    assert torch.isfinite(pruned).all() and int((pruned == 0).sum()) == weight.numel() // 2


def test_row_prune_zeroes_the_smallest_rows(layer) -> None:
    weight, _, _ = layer
    pruned = get_method("row_prune").apply(weight, None, {"fraction": 0.25})
    removed = (pruned == 0).all(dim=1)
    assert int(removed.sum()) == 16
    assert torch.equal(pruned[~removed], weight[~removed])
    norms = weight.norm(dim=1)
    assert norms[removed].max() <= norms[~removed].min()


@pytest.mark.parametrize("axis", ["rows", "columns"])
def test_head_prune_zeroes_whole_heads_of_smallest_norm(layer, axis) -> None:
    weight, _, _ = layer
    head_dim = 16
    pruned = get_method("head_prune").apply(weight, None, {"fraction": 0.5, "head_dim": head_dim, "axis": axis})
    oriented, original = (pruned, weight) if axis == "rows" else (pruned.T, weight.T)
    heads = oriented.shape[0] // head_dim
    removed = (oriented.reshape(heads, -1) == 0).all(dim=1)
    assert int(removed.sum()) == round(0.5 * heads)
    norms = original.reshape(heads, -1).norm(dim=1)
    assert norms[removed].max() <= norms[~removed].min()
    kept_rows = ~removed.repeat_interleave(head_dim)
    assert torch.equal(oriented[kept_rows], original[kept_rows])


def _sorted_keep(scores: torch.Tensor, count: int) -> torch.Tensor:
    """The reference: False at the first ``count`` positions of a stable argsort along the last dimension."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep.scatter_(-1, torch.argsort(scores, dim=-1, stable=True)[..., :count], False)
    return keep


@pytest.mark.parametrize("shape", [(7,), (5, 9), (3, 4, 4), (1, 1), (6, 128)])
@pytest.mark.parametrize("levels", [3, 1000])
def test_lowest_scores_mask_is_the_stable_sort_mask(shape: tuple[int, ...], levels: int) -> None:
    """Selection gives the stable sort's mask at every count, with many ties (3 levels), infinities and NaN."""
    generator = torch.Generator().manual_seed(levels + len(shape))
    for trial in range(4):
        scores = torch.randint(0, levels, shape, generator=generator).to(
            torch.float64 if trial % 2 else torch.float32
        )
        if trial == 2:
            scores[..., 0] = float("inf")
        if trial == 3:
            scores[..., -1] = float("nan")
        for count in range(shape[-1] + 1):
            assert torch.equal(lowest_scores_mask(scores, count), _sorted_keep(scores, count)), (trial, count)
