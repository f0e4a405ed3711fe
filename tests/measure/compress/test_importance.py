"""Importance metrics against direct computations from hidden states, sublayer ablations and router logits."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from tiny_inputs import token_batches
from tiny_models import tiny_model

from measure.compress.importance import (
    ORDERINGS,
    angular_distances,
    angular_start,
    angular_table,
    choose_units,
    importance_table,
    influence,
    measure_importance,
    normalized_relative_importance,
    record_router_scores,
    removal_sqnr_db,
)
from measure.compress.remove import remove_sublayers
from measure.models.architecture import describe
from theory.errors import PvqError

BLOCKS = 4


def _block_states(model: torch.nn.Module, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """Residual stream at every block boundary, (tokens, hidden) float64, from output_hidden_states plus a
    pre-hook on the final norm (HF's last hidden state is after the final norm)."""
    arch = describe(model)
    last: list[torch.Tensor] = []
    handle = arch.final_norm.register_forward_pre_hook(lambda module, args: last.append(args[0]))
    states: list[list[torch.Tensor]] = [[] for _ in range(len(arch.blocks) + 1)]
    with torch.no_grad():
        for ids in batches:
            hidden = model(ids, output_hidden_states=True).hidden_states
            for index in range(len(arch.blocks)):
                states[index].append(hidden[index])
    handle.remove()
    states[-1] = last
    return [torch.cat(parts).double() for parts in states]


def _one_minus_cosine(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    return 1.0 - float(((x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1))).mean())


def test_block_influence_and_removal_sqnr_equal_direct_computation() -> None:
    model = tiny_model("llama", num_hidden_layers=BLOCKS)
    states = _block_states(model, token_batches(1))
    importance = measure_importance(model, token_batches(1))
    expected_bi = [_one_minus_cosine(states[i], states[i + 1]) for i in range(BLOCKS)]
    np.testing.assert_allclose(influence(importance.blocks), expected_bi, rtol=1e-6)
    expected_sqnr = [
        10 * math.log10(float((states[i + 1] ** 2).sum()) / float(((states[i + 1] - states[i]) ** 2).sum()))
        for i in range(BLOCKS)
    ]
    np.testing.assert_allclose(removal_sqnr_db(importance.blocks), expected_sqnr, rtol=1e-6)


def test_angular_distance_and_rule_equal_direct_computation() -> None:
    model = tiny_model("llama", num_hidden_layers=BLOCKS)
    last_tokens = [s.reshape(4, 16, -1)[:, -1, :].numpy() for s in _block_states(model, token_batches(1))]
    importance = measure_importance(model, token_batches(1))
    for n in range(1, BLOCKS):
        direct = []
        for start in range(BLOCKS - n + 1):
            a, b = last_tokens[start], last_tokens[start + n]
            cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
            direct.append(float(np.mean(np.arccos(np.clip(cosine, -1, 1)) / np.pi)))
        np.testing.assert_allclose(angular_distances(importance.states, n), direct, rtol=1e-6)
        assert angular_start(importance.states, n) == int(np.argmin(direct))
    table = angular_table(importance.states, 3)
    assert table.groupby("n")["chosen"].sum().tolist() == [1, 1, 1]
    assert len(table) == BLOCKS + (BLOCKS - 1) + (BLOCKS - 2)


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt_neox"])
def test_drop_scores_equal_ablation_of_the_other_sublayer(family: str) -> None:
    """LLM-Drop score from hooks vs residual streams of ablated copies: with the MLP of block i zeroed, block i
    outputs x + a; with the attention zeroed, x + m (parallel) — sequential blocks read h = x + a in the MLP."""
    overrides = {"layer_types": ["full_attention"] * 3} if family == "gemma3" else {}
    model = tiny_model(family, num_hidden_layers=3, **overrides)
    importance = measure_importance(model, token_batches(1))
    parallel = describe(model).blocks[0].parallel
    original = _block_states(model, token_batches(1))
    for index in range(3):
        without = {}
        for kind in ("attention", "mlp"):
            ablated = copy.deepcopy(model)
            remove_sublayers(ablated, kind, [index])
            without[kind] = _block_states(ablated, token_batches(1))[index + 1]
        x, y = original[index], original[index + 1]
        attention_score = _one_minus_cosine(x, without["mlp"])
        mlp_input, mlp_output = (x, without["attention"]) if parallel else (without["mlp"], y)
        mlp_score = _one_minus_cosine(mlp_input, mlp_output)
        assert influence(importance.sublayers.attention)[index] == pytest.approx(attention_score, rel=1e-5)
        assert influence(importance.sublayers.mlp)[index] == pytest.approx(mlp_score, rel=1e-5)


def test_router_scores_equal_gates_recomputed_from_router_logits() -> None:
    """Mixtral routes by softmax → top-k → renormalize; the score is the summed renormalized gate per expert."""
    model = tiny_model("mixtral")
    arch = describe(model)
    logits: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    handles = [
        block.mlp.router.module.register_forward_hook(
            lambda module, args, output, index=block.index: logits[index].append(output[0])
        )
        for block in arch.blocks
    ]
    with record_router_scores(arch) as scores, torch.no_grad():
        for ids in token_batches(1):
            model(ids)
    for handle in handles:
        handle.remove()
    for index, parts in logits.items():
        probabilities = torch.softmax(torch.cat(parts).double(), dim=-1)
        top, chosen = torch.topk(probabilities, 2, dim=-1)
        gates = top / top.sum(-1, keepdim=True)
        expected = np.zeros(4)
        np.add.at(expected, chosen.reshape(-1).numpy(), gates.reshape(-1).numpy())
        np.testing.assert_allclose(scores[index], expected, rtol=1e-5)
        assert scores[index].sum() == pytest.approx(64.0)


def test_normalized_relative_importance_formula() -> None:
    assert normalized_relative_importance(10.0, 12.5, 1000) == pytest.approx(0.25 / 1000)
    with pytest.raises(PvqError, match="positive parameter count"):
        normalized_relative_importance(10.0, 12.0, 0)


def test_orderings_pick_what_their_metric_says() -> None:
    model = tiny_model("llama", num_hidden_layers=6)
    importance = measure_importance(model, token_batches(1))
    bi = influence(importance.blocks)
    assert choose_units("bi", importance, 2)[1] == sorted(np.argsort(bi)[:2].tolist())
    start = angular_start(importance.states, 3)
    assert choose_units("angular", importance, 3) == ("block", [start, start + 1, start + 2])
    assert choose_units("reverse", importance, 2) == ("block", [4, 5])
    permutation = np.random.default_rng(3).permutation(6)
    assert choose_units("random", importance, 2, seed=3)[1] == sorted(permutation[:2].tolist())
    two, three = (set(choose_units("random", importance, n, seed=3)[1]) for n in (2, 3))
    assert two < three
    drop = influence(importance.sublayers.mlp)
    assert choose_units("mlp", importance, 6) == ("mlp", list(range(6)))
    assert choose_units("mlp", importance, 1) == ("mlp", [int(np.argmin(drop))])
    assert choose_units("attn", importance, 1)[0] == "attention"
    errors = importance_table(importance).query("unit == 'block'")["removal_relative_error"].to_numpy()
    assert choose_units("sqnr", importance, 1)[1] == [int(np.argmin(errors))]
    assert set(ORDERINGS) == {"bi", "angular", "sqnr", "reverse", "random", "attn", "mlp"}


def test_bad_metric_and_counts_are_one_clear_error() -> None:
    model = tiny_model("llama", num_hidden_layers=BLOCKS)
    importance = measure_importance(model, token_batches(1))
    with pytest.raises(PvqError, match=r"unknown removal metric 'shortgpt'.*bi, angular"):
        choose_units("shortgpt", importance, 1)
    with pytest.raises(PvqError, match="cannot remove 4 blocks from a model of 4"):
        choose_units("bi", importance, 4)
    with pytest.raises(PvqError, match="cannot remove 0 blocks"):
        angular_distances(importance.states, 0)
    with pytest.raises(PvqError, match="cannot remove 5 attention sublayers"):
        choose_units("attn", importance, 5)
