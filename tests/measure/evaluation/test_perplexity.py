"""Perplexity, cross-entropy and KL from hidden states, checked against plain transformers losses."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from tiny_inputs import text_ids, windows_of
from tiny_models import TINY_FAMILIES, TINY_VOCAB_SIZE, tiny_model, tiny_tokenizer

from measure.evaluation.perplexity import (
    bos_token_id_for,
    check_window_fits,
    cut_windows,
    evaluate_perplexity,
    make_windows,
    tokenize_text,
)
from measure.evaluation.results import ResultCache
from measure.evaluation.runs import ModelVariant, cached_perplexity
from theory.errors import PvqError

VOCAB = TINY_VOCAB_SIZE
BOS = 1


def sharpened(model: torch.nn.Module) -> torch.nn.Module:
    """Scale the output head so next-token distributions are far from uniform (wrong targets would show)."""
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(40.0)
    return model


def tiny_llama(seed: int = 0) -> torch.nn.Module:
    return sharpened(tiny_model("llama", seed=seed))


def tiny_gemma(seed: int = 0) -> torch.nn.Module:
    return sharpened(tiny_model("gemma3", seed=seed, final_logit_softcapping=3.0))


@torch.no_grad()
def reference_nll(model: torch.nn.Module, ids: torch.Tensor, window: int, stride: int | None,
                  bos: int | None) -> tuple[float, int]:
    """Σ NLL and token count the plain way: model(input_ids, labels) per window, Hugging Face style.

    Non-overlapping (stride None): GPTQ loop over ids[k·C:(k+1)·C]. Sliding: the Hugging Face guide's loop,
    masking with −100 the labels the previous window already scored. BOS, when given, is prepended.
    """
    content = window - (bos is not None)
    stride = stride or content
    total, count, previous_end = 0.0, 0, 0
    for begin in range(0, len(ids) - content + 1, stride):
        end = begin + content
        piece = ids[begin:end]
        labels = piece.clone()
        labels[: max(0, previous_end - begin)] = -100
        if bos is not None:
            piece = torch.cat([torch.tensor([bos]), piece])
            labels = torch.cat([torch.tensor([-100]), labels])
        n = int((labels[1:] != -100).sum())
        loss = model(input_ids=piece[None], labels=labels[None]).loss
        total += float(loss) * n
        count += n
        previous_end = end
    return total, count


@pytest.mark.parametrize("stride", [None, 5, 15])
@pytest.mark.parametrize("bos", [None, BOS])
def test_perplexity_equals_plain_transformers_loss(stride: int | None, bos: int | None) -> None:
    model, ids = tiny_llama(), text_ids()
    windows = windows_of(ids, 16, stride, bos)
    result = evaluate_perplexity(model, windows, batch_size=3, logits_budget_bytes=4 * VOCAB * 7)
    total, count = reference_nll(model, ids, 16, stride, bos)
    assert result.n_tokens == count
    assert result.perplexity == pytest.approx(math.exp(total / count), rel=1e-5)
    assert result.cross_entropy_nats == pytest.approx(math.log(result.perplexity), rel=1e-12)
    assert result.log_vocab_nats == pytest.approx(math.log(VOCAB))
    assert result.normalized_cross_entropy == pytest.approx(total / count / math.log(VOCAB), rel=1e-5)
    assert result.kl_to_reference_nats is None


def test_gemma_softcapped_logits_match_its_own_loss() -> None:
    model, ids = tiny_gemma(), text_ids()
    result = evaluate_perplexity(model, windows_of(ids, 20, 7, BOS), batch_size=2)
    total, count = reference_nll(model, ids, 20, 7, BOS)
    assert result.perplexity == pytest.approx(math.exp(total / count), rel=1e-5)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_hidden_state_loss_matches_every_architecture(family: str) -> None:
    model, ids = sharpened(tiny_model(family)), text_ids(80)
    result = evaluate_perplexity(model, windows_of(ids, 20, 7))
    total, count = reference_nll(model, ids, 20, 7, None)
    assert result.perplexity == pytest.approx(math.exp(total / count), rel=1e-5)


def test_scoring_covers_every_token_once() -> None:
    """Each token is scored at most once; all are scored except the GPTQ windows' first tokens without BOS."""
    ids = torch.arange(100)
    for stride in (None, 1, 7, 15):
        for bos in (None, BOS):
            input_ids, scored = cut_windows(ids, 16, stride, bos, None)
            positions = input_ids[:, int(bos is not None):]
            hits = positions[scored[:, int(bos is not None):]]
            assert len(set(hits.tolist())) == len(hits), "a token scored twice"
            last = int(input_ids[-1, -1])
            expected = set(range(last + 1))
            if bos is None:
                expected -= set(input_ids[:, 0].tolist()) if stride is None else {0}
            assert set(hits.tolist()) == expected


def test_non_overlapping_windows_follow_gptq() -> None:
    ids = torch.arange(50)
    input_ids, scored = cut_windows(ids, 8, None, None, None)
    assert torch.equal(input_ids, ids[:48].view(6, 8))
    assert scored[:, 1:].all() and not scored[:, 0].any()
    assert cut_windows(ids, 8, None, None, 2)[0].shape == (2, 8)


def test_bos_policy_is_per_model() -> None:
    class Tokenizer:
        bos_token_id = 5

    ids = torch.arange(10, 40)
    with_bos, scored = cut_windows(ids, 8, None, bos_token_id_for(Tokenizer(), True), None)
    assert (with_bos[:, 0] == 5).all() and torch.equal(with_bos[0, 1:], ids[:7])
    assert scored[:, 1:].all() and not scored[:, 0].any()
    without_bos, _ = cut_windows(ids, 8, None, bos_token_id_for(Tokenizer(), False), None)
    assert torch.equal(without_bos[0], ids[:8])
    Tokenizer.bos_token_id = None
    with pytest.raises(PvqError, match="no"):
        bos_token_id_for(Tokenizer(), True)


def test_kl_to_itself_is_zero_and_to_another_model_matches_full_logits() -> None:
    model, other, ids = tiny_llama(0), tiny_llama(1), text_ids()
    windows = windows_of(ids, 16, 6)
    assert evaluate_perplexity(model, windows, reference=model).kl_to_reference_nats == pytest.approx(0, abs=1e-7)
    result = evaluate_perplexity(model, windows, reference=other, logits_budget_bytes=4 * VOCAB * 10)
    with torch.no_grad():
        log_p = torch.log_softmax(model(windows.input_ids).logits, -1)[:, :-1][windows.scored[:, 1:]]
        log_ref = torch.log_softmax(other(windows.input_ids).logits, -1)[:, :-1][windows.scored[:, 1:]]
    expected = torch.nn.functional.kl_div(log_p, log_ref, log_target=True, reduction="batchmean")
    assert result.kl_to_reference_nats == pytest.approx(float(expected), rel=1e-5)
    assert result.perplexity == pytest.approx(evaluate_perplexity(model, windows).perplexity, rel=1e-6)


def test_bad_inputs_give_one_clear_error() -> None:
    class Tokenizer:
        def __call__(self, text: str, **kwargs: object) -> dict[str, list[int]]:
            return {"input_ids": [3] * len(text.split())}

    with pytest.raises(PvqError, match="empty"):
        tokenize_text("  \n", Tokenizer())
    with pytest.raises(PvqError, match="fewer than one window"):
        cut_windows(tokenize_text("a b c", Tokenizer()), 8, None, None, None)
    with pytest.raises(PvqError, match="stride"):
        cut_windows(text_ids(), 8, 9, None, None)
    with pytest.raises(PvqError, match="context of 256"):
        check_window_fits(tiny_llama(), 257)


def test_windows_are_pinned_by_text_and_tokenizer() -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 4
    first = make_windows(text, tiny_tokenizer(), 32, stride=10, bos_token_id=BOS, max_windows=3)
    again = make_windows(text, tiny_tokenizer(), 32, stride=10, bos_token_id=BOS, max_windows=3)
    assert first.protocol == again.protocol and torch.equal(first.input_ids, again.input_ids)
    assert first.input_ids.shape == (3, 32)
    assert first.protocol.text_tokens == len(text.encode())
    assert first.protocol.as_dict()["variant"] == "sliding"
    assert torch.equal(first.input_ids[0, 1:], torch.tensor(list(text.encode()[:31])) + 3)
    other = make_windows(text.replace("fox", "cat"), tiny_tokenizer(), 32, stride=10, bos_token_id=BOS)
    assert other.protocol.text_sha256 != first.protocol.text_sha256
    assert other.protocol.windows_sha256 != first.protocol.windows_sha256


class LoadedTiny:
    """Stands in for measure.models.load.LoadedModel."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.tokenizer, self.model_id, self.model_hash = model, tiny_tokenizer(), "tiny", "0123"
        self.bos_per_window, self.weights_sha256 = False, None

    def describe(self) -> dict[str, str]:
        return {"model_id": self.model_id, "model_hash": self.model_hash}


def test_compressed_variant_is_built_lazily_cached_and_compared_to_its_reference(tmp_path) -> None:
    loaded, cache, calls = LoadedTiny(tiny_llama()), ResultCache(tmp_path), []

    def halve_head(model: torch.nn.Module) -> torch.nn.Module:
        calls.append(model)
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(0.5)
        return model

    windows = make_windows("Pruning versus quantization, measured. " * 5, loaded.tokenizer, 40, max_windows=4)
    rows, cached = cached_perplexity(cache, ModelVariant(loaded, "halve-head", halve_head), windows)
    again, cached_again = cached_perplexity(cache, ModelVariant(loaded, "halve-head", halve_head), windows)
    assert (cached, cached_again, len(calls)) == (False, True, 1) and again == rows
    assert calls[0] is not loaded.model
    metrics = {row["metric"]: row["value"] for row in rows}
    direct = evaluate_perplexity(calls[0], windows, reference=tiny_llama())
    assert metrics["kl_to_reference_nats"] == pytest.approx(direct.kl_to_reference_nats, rel=1e-9)
    assert metrics["perplexity"] == pytest.approx(direct.perplexity, rel=1e-9)
    plain, _ = cached_perplexity(cache, ModelVariant(loaded), windows)
    assert "kl_to_reference_nats" not in {row["metric"] for row in plain}
    assert plain[0]["cache_key"] != rows[0]["cache_key"]


def test_per_token_scores_match_full_logits_and_carry_llama_cpp_statistics() -> None:
    model, other, ids = tiny_llama(0), tiny_llama(1), text_ids()
    windows = windows_of(ids, 16, None)
    result = evaluate_perplexity(model, windows, reference=other, logits_budget_bytes=4 * VOCAB * 7)
    with torch.no_grad():
        logits = model(windows.input_ids).logits[:, :-1][windows.scored[:, 1:]]
        reference = other(windows.input_ids).logits[:, :-1][windows.scored[:, 1:]]
    targets = windows.input_ids[:, 1:][windows.scored[:, 1:]]
    nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    reference_nll = torch.nn.functional.cross_entropy(reference, targets, reduction="none")
    tokens = result.tokens
    assert tokens is not None and len(tokens.nll) == windows.n_scored
    assert tokens.nll == pytest.approx(nll.numpy(), rel=1e-4)
    assert tokens.window.tolist() == torch.nonzero(windows.scored[:, 1:])[:, 0].tolist()
    same = (logits.argmax(-1) == reference.argmax(-1)).float().mean()
    assert tokens.same_top.mean() == pytest.approx(float(same))
    columns = result.interval_columns()
    assert columns["ln_ppl_ratio"] == pytest.approx(float((nll - reference_nll).mean()), abs=1e-5)
    assert columns["kl_to_reference_nats_ci_low"] <= result.kl_to_reference_nats <= columns[
        "kl_to_reference_nats_ci_high"]
    assert columns["perplexity_ci_low"] <= result.perplexity <= columns["perplexity_ci_high"]
    assert columns["kl_median"] <= columns["kl_p99"] <= columns["kl_p999"]
    assert columns["tokens"] == windows.n_scored


def test_residual_evaluator_gives_the_same_per_token_scores() -> None:
    from measure.evaluation.residual import ResidualStreamEvaluator

    model, ids = tiny_llama(0), text_ids(200)
    windows = windows_of(ids, 16, None)
    evaluator = ResidualStreamEvaluator(model, windows, batch_size=3)
    fast = evaluator.evaluate([1])
    from measure.compress.remove import remove_blocks

    removed = copy.deepcopy(model)
    remove_blocks(removed, [1])
    slow = evaluate_perplexity(removed, windows, reference=model)
    assert fast.tokens.window.tolist() == slow.tokens.window.tolist()
    assert fast.tokens.kl == pytest.approx(slow.tokens.kl, rel=1e-3, abs=1e-6)
    assert fast.tokens.nll == pytest.approx(slow.tokens.nll, rel=1e-4)
