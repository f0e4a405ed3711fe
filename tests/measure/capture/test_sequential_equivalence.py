"""Layer-sequential and whole-model paths give the same Grams, ledger rows, block importance, compressed weights
and perplexity.

The whole-model path hooks every layer and runs the model forward; the layer-sequential path
(:mod:`measure.capture.blocks`) pushes cached block inputs through one block at a time. Checked on a sequential
(Llama) and a parallel (GPT-NeoX) family, against direct products XᵀX of the kept input rows.
"""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from tiny_inputs import token_batches
from tiny_models import TINY_VOCAB_SIZE, tiny_model, tiny_tokenizer

from measure.capture.blocks import record_block_inputs, run_block
from measure.capture.memory import BlockMemoryLog
from measure.capture.placement import Placement
from measure.capture.statistics import capture
from measure.compress.apply import apply_spec
from measure.compress.importance import importance_table, measure_importance
from measure.compress.spec import parse_spec
from measure.evaluation.perplexity import (
    chunk_statistics,
    cut_windows,
    evaluate_perplexity,
    make_windows,
    output_head,
)
from measure.ledger import build_ledger
from measure.models.architecture import describe

FAMILIES = ("llama", "gpt_neox")
LEDGER_METHODS = "magnitude:0.5,wanda:0.5,sparsegpt:0.5,rtn:4:channel,gptq:4:channel"
SPEC = "sparsegpt:0.5@attention+gptq:4:channel@mlp"
TOKENS = 4 * 16
TEXT = "The quick brown fox jumps over the lazy dog while the cat sleeps by the warm fire. " * 8


@pytest.mark.parametrize("family", FAMILIES)
def test_grams_and_ledger_rows_agree(family: str) -> None:
    model = tiny_model(family, num_hidden_layers=3)
    whole = build_ledger(
        model, token_batches(7, high=TINY_VOCAB_SIZE), LEDGER_METHODS, Placement("cpu"), keep_rows=TOKENS
    )
    memory = BlockMemoryLog("cpu")
    sequential = build_ledger(
        model, token_batches(7, high=TINY_VOCAB_SIZE), LEDGER_METHODS, Placement("cpu", capture_mode="sequential"),
        block_hooks=memory.hooks,
    )
    assert sorted(memory.peaks) == [0, 1, 2]
    assert whole.capture.grams.keys() == sequential.capture.grams.keys()
    for group, accumulator in whole.capture.grams.items():
        direct = accumulator.sample.T @ accumulator.sample
        tolerance = {"rtol": 1e-5, "atol": 1e-6 * float(direct.abs().max())}
        assert accumulator.tokens == sequential.capture.grams[group].tokens == TOKENS
        torch.testing.assert_close(accumulator.gram, direct, **tolerance)
        torch.testing.assert_close(sequential.capture.grams[group].gram, direct, **tolerance)
    columns = [c for c in whole.table.columns if c != "seconds"]
    assert len(whole.table) == len(describe(model).linears) * len(LEDGER_METHODS.split(","))
    numeric = ["relative_error", "sqnr_db", "weight_sqnr_db", "bits_per_weight", "zero_fraction"]
    identity = [c for c in columns if c not in numeric]
    assert whole.table[identity].equals(sequential.table[identity])
    for column in numeric:
        expected, actual = (torch.tensor(ledger.table[column].to_numpy(float)) for ledger in (whole, sequential))
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("family", FAMILIES)
def test_block_and_sublayer_importance_agree(family: str) -> None:
    """What `pvq remove` ranks: block and sublayer statistics, from either pass."""
    model = tiny_model(family, num_hidden_layers=3)
    placements = (Placement("cpu", capture_mode=mode) for mode in ("full", "sequential"))
    whole, sequential = (
        importance_table(measure_importance(model, token_batches(7, high=TINY_VOCAB_SIZE), placement=place))
        for place in placements
    )
    assert whole[["unit", "block", "tokens"]].equals(sequential[["unit", "block", "tokens"]])
    numeric = ["influence", "removal_relative_error", "removal_sqnr_db"]
    pd.testing.assert_frame_equal(sequential[numeric], whole[numeric], rtol=1e-5)


def compress_whole_model(model: torch.nn.Module, batches: list[torch.Tensor]) -> None:
    """Capture every Gram with hooks on one whole-model pass, then compress each layer with its Gram."""
    spec = parse_spec(SPEC)
    captured = capture(model, batches, mode="full")
    for ref in describe(model).linears:
        step = spec.step_for(ref)
        gram = captured.gram_for(ref.name).gram if step.method.needs_gram else None
        ref.set_weight(step.method.apply(ref.weight().clone(), gram, step.params))


def block_by_block_perplexity(model: torch.nn.Module, input_ids: torch.Tensor) -> float:
    """exp of the mean next-token loss with the backbone run one cached block at a time."""
    arch = describe(model)
    inputs = record_block_inputs(model, arch, [input_ids])
    for block in arch.blocks:
        inputs.hidden = run_block(arch, block.index, inputs)
    with torch.no_grad():
        final = arch.final_norm(inputs.hidden[0]) if arch.final_norm is not None else inputs.hidden[0]
        logits = output_head(model)(final[:, :-1].reshape(-1, final.shape[-1]))
    nll, _ = chunk_statistics(logits, input_ids[:, 1:].reshape(-1), None)
    return float(torch.tensor(nll / logits.shape[0]).exp())


@pytest.mark.parametrize("family", FAMILIES)
def test_compressed_weights_and_perplexity_agree(family: str) -> None:
    model = tiny_model(family, num_hidden_layers=3)
    whole, sequential = copy.deepcopy(model), copy.deepcopy(model)
    compress_whole_model(whole, token_batches(7, high=TINY_VOCAB_SIZE))
    report = apply_spec(sequential, SPEC, token_batches(7, high=TINY_VOCAB_SIZE), calibration="parallel")
    assert len(report.layers) == len(describe(model).linears)
    for a, b in zip(describe(whole).linears, describe(sequential).linears, strict=True):
        torch.testing.assert_close(a.weight(), b.weight(), rtol=1e-5, atol=1e-6)
    windows = make_windows(TEXT, tiny_tokenizer(), 32, max_windows=4)
    whole_ppl = evaluate_perplexity(whole, windows).perplexity
    assert evaluate_perplexity(sequential, windows).perplexity == pytest.approx(whole_ppl, rel=1e-5)
    assert whole_ppl != pytest.approx(evaluate_perplexity(model, windows).perplexity, rel=1e-5)
    input_ids, _ = cut_windows(windows.input_ids.reshape(-1)[:64], 32, None, None, None)
    with torch.no_grad():
        direct = torch.nn.functional.cross_entropy(
            sequential(input_ids).logits[:, :-1].reshape(-1, TINY_VOCAB_SIZE), input_ids[:, 1:].reshape(-1)
        ).exp()
    assert block_by_block_perplexity(sequential, input_ids) == pytest.approx(float(direct), rel=1e-5)
