"""The views of the removal study against direct computations on a residual model built by hand.

The toy: a tiny Llama whose attention and MLP outputs are scaled down so that each block's residual update is a
few percent of its input (‖y − x‖ / ‖x‖ ≈ 0.04, as in the middle of real LLMs). Every view of removal and of RTN
is recomputed here without the study's code: layer errors from the linears' inputs X captured by hooks
(‖X ΔWᵀ‖² / ‖X Wᵀ‖², not the Gram), block errors by running a copy of the model whose only compressed block is i
(its input is then the original x_i), and KL with :func:`measure.evaluation.perplexity.evaluate_perplexity`.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tiny_inputs import token_batches
from tiny_models import linear_inputs, tiny_model, tiny_tokenizer

from measure.capture.statistics import capture
from measure.compress.methods import get_method
from measure.compress.remove import remove_blocks
from measure.compress.spec import parse_term_list
from measure.evaluation.perplexity import evaluate_perplexity, make_windows
from measure.evaluation.residual import ResidualStreamEvaluator
from measure.models.architecture import describe
from measure.removal.views import ResidualStream, ScoringData, ViewMeter, check_views, removal_errors
from theory.errors import PvqError

TEXT = " ".join(f"The {i % 17}th river runs past {i % 5} old mills." for i in range(400))
BRANCH_SCALE = 0.18
"""Scales o_proj and down_proj so that ‖y − x‖ / ‖x‖ ≈ 0.04 in every block of the toy."""


def _toy() -> torch.nn.Module:
    model = tiny_model("llama", num_hidden_layers=4)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(BRANCH_SCALE)
            layer.mlp.down_proj.weight.mul_(BRANCH_SCALE)
    return model


def _linear_inputs(model: torch.nn.Module, batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every block linear's input rows X (tokens × in) over ``batches``, float64, by forward hooks."""
    return linear_inputs(model, batches, describe(model).linears)


def _block_io(model: torch.nn.Module, batches: list[torch.Tensor], index: int
              ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(input, output) hidden states of block ``index`` over ``batches``."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    block = model.model.layers[index]
    handle = block.register_forward_hook(
        lambda m, args, kwargs, out: seen.append((kwargs.get("hidden_states", args[0] if args else None),
                                                  out[0] if isinstance(out, tuple) else out)), with_kwargs=True)
    with torch.no_grad():
        for ids in batches:
            model(ids)
    handle.remove()
    return torch.cat([x for x, _ in seen]).double(), torch.cat([y for _, y in seen]).double()


@pytest.fixture(scope="module")
def toy() -> dict:
    model, batches = _toy(), token_batches(1, length=24)
    arch = describe(model)
    meter = ViewMeter(arch, capture(model, batches), ResidualStream.record(model, arch, batches), workers=1)
    step = parse_term_list("rtn:4:g128")[0]
    return {"model": model, "batches": batches, "arch": arch, "meter": meter, "step": step,
            "rtn": meter.compress(step)}


def test_the_toy_blocks_update_the_residual_stream_by_a_few_percent(toy) -> None:
    for index in range(4):
        x, y = _block_io(toy["model"], toy["batches"], index)
        assert 0.02 < float((y - x).norm() / x.norm()) < 0.08


def test_layer_view_of_removal_is_the_energy_share_and_the_parameter_share_of_the_removed_linears(toy) -> None:
    inputs = _linear_inputs(toy["model"], toy["batches"])
    weights = {ref.name: ref.weight().detach().double() for ref in toy["arch"].linears}
    energy = {name: float((inputs[name] @ w.T).pow(2).sum()) for name, w in weights.items()}
    removed = [1, 3]
    inside = [name for name in weights if any(f"layers.{b}." in name for b in removed)]
    views = removal_errors(toy["meter"].layers, toy["meter"].update_energy, removed)
    share = sum(energy[n] for n in inside) / sum(energy.values())
    assert views["layer_energy"] == pytest.approx(share, rel=1e-6)  # X from two float32 forwards
    assert views["layer_parameters"] == sum(weights[n].numel() for n in inside) / sum(
        w.numel() for w in weights.values())
    states = [_block_io(toy["model"], toy["batches"], i) for i in range(4)]
    updates = [float((y - x).pow(2).sum()) for x, y in states]
    assert views["block"] == pytest.approx(sum(updates[i] for i in removed) / sum(updates), rel=1e-6)


def test_layer_and_block_views_of_rtn_equal_errors_computed_directly(toy) -> None:
    model, batches, meter, rtn = toy["model"], toy["batches"], toy["meter"], toy["rtn"]
    inputs = _linear_inputs(model, batches)
    method = get_method("rtn")
    relative, energy, block_error, updates = [], [], np.zeros(4), np.zeros(4)
    for ref in meter.refs:
        w = ref.weight().detach()
        w_hat = method.apply(w, None, toy["step"].params).double()
        x = inputs[ref.name]
        energy.append(float((x @ w.double().T).pow(2).sum()))
        relative.append(float((x @ (w_hat - w.double()).T).pow(2).sum()) / energy[-1])
    np.testing.assert_allclose(rtn.relative[:, 0], relative, rtol=1e-6)  # X from two float32 forwards
    for index in range(4):
        compressed = copy.deepcopy(model)
        for ref in describe(compressed).blocks[index].linears:
            ref.set_weight(method.apply(ref.weight().detach(), None, toy["step"].params))
        x, y = _block_io(model, batches, index)
        x_again, y_hat = _block_io(compressed, batches, index)
        torch.testing.assert_close(x_again, x)
        block_error[index] = float((y_hat - y).pow(2).sum())
        updates[index] = float((y - x).pow(2).sum())
    views = meter.local_errors(rtn)
    assert views["layer_energy"] == pytest.approx(np.dot(relative, energy) / sum(energy), rel=1e-6)
    parameters = [ref.out_features * ref.in_features for ref in meter.refs]
    assert views["layer_parameters"] == pytest.approx(np.dot(relative, parameters) / sum(parameters), rel=1e-6)
    assert views["block"] == pytest.approx(block_error.sum() / updates.sum(), rel=1e-4)


def test_on_the_toy_removing_one_block_is_worse_than_rtn_4_in_every_view(toy) -> None:
    model, meter, rtn = toy["model"], toy["meter"], toy["rtn"]
    removal = removal_errors(meter.layers, meter.update_energy, [2])
    compression = meter.local_errors(rtn)
    for view in ("layer_energy", "layer_parameters", "block"):
        assert removal[view] > compression[view], view
    windows = make_windows(TEXT, tiny_tokenizer(), 48, max_windows=2)
    removed = copy.deepcopy(model)
    remove_blocks(removed, [2])
    quantized = copy.deepcopy(model)
    for ref, weight in zip(describe(quantized).linears, rtn.weights, strict=True):
        ref.set_weight(weight)
    kl_removed = evaluate_perplexity(removed, windows, reference=model).kl_to_reference_nats
    kl_quantized = evaluate_perplexity(quantized, windows, reference=model).kl_to_reference_nats
    assert kl_removed > kl_quantized > 0
    evaluator = ResidualStreamEvaluator(model, windows, batch_size=2)
    assert meter.evaluate(rtn.weights, evaluator).kl_to_reference_nats == pytest.approx(kl_quantized, rel=1e-3)


def test_installed_weights_are_restored_exactly(toy) -> None:
    before = {k: v.clone() for k, v in toy["model"].state_dict().items()}
    toy["meter"].local_errors(toy["rtn"])
    for key, value in toy["model"].state_dict().items():
        assert torch.equal(value, before[key]), key


def test_an_unknown_view_is_one_clear_error() -> None:
    with pytest.raises(PvqError, match="unknown view 'residual'; choose one of layer_energy, layer_parameters, "
                                       "block, end_to_end"):  # fmt: skip
        check_views(["block", "residual"])
    assert check_views(["block"]) == ("block",)


def _held_out_batches() -> list[torch.Tensor]:
    return list(torch.randint(3, 300, (4, 24), generator=torch.Generator().manual_seed(2)).split(2))


def test_an_injected_sink_dominates_all_positions_but_not_the_headline_view() -> None:
    """Block 0's MLP writes a massive update at position 0 of every window (an attention-sink stand-in): it holds
    most of the block view's denominator over all positions, and the headline view leaves it out."""
    model = _toy()

    def sink(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[:, 0] *= 200.0
        return output

    model.model.layers[0].mlp.register_forward_hook(sink)
    arch, calibration, held = describe(model), token_batches(1, length=24), _held_out_batches()
    scoring = ScoringData(capture(model, held, positions=slice(1, None)),
                          capture(model, held, positions=slice(0, 1)), capture(model, calibration),
                          ResidualStream.record(model, arch, held),
                          ResidualStream.record(model, arch, calibration), 1)  # fmt: skip
    meter = ViewMeter(arch, capture(model, calibration), scoring.calibration_stream, workers=1, scoring=scoring)
    shares = meter.denominator_shares().set_index("view")
    assert shares.loc["block", "sink_share"] > 0.9
    states = [_block_io(model, held, i) for i in range(4)]
    updates = np.array([(y - x).pow(2).sum(dim=-1).double().numpy() for x, y in states])  # (blocks, seq, pos)
    removal = meter.removal_errors([0])
    assert removal["block"] == pytest.approx(updates[0, :, 1:].sum() / updates[:, :, 1:].sum(), rel=1e-5)
    everything = removal["variants"]["block"]["all_positions"]
    assert everything == pytest.approx(updates[0].sum() / updates.sum(), rel=1e-5)
    assert removal["variants"]["block"]["all_positions"] > 0.9 > removal["block"]
    # the headline Gram leaves position 0 out: energies of one layer against a direct computation
    ref = meter.refs[0]
    inputs = _linear_inputs(model, held)[ref.name].reshape(4, 24, -1)[:, 1:].reshape(-1, ref.in_features)
    direct = float((inputs @ ref.weight().detach().double().T).pow(2).sum())
    assert meter.layers["output_energy"].iloc[0] == pytest.approx(direct, rel=1e-5)
    # a method scored in sample (on its calibration data) and held out differ; both are reported
    rtn = meter.compress(parse_term_list("rtn:3:g128")[0])
    views = meter.local_errors(rtn)
    assert views["variants"]["block"]["in_sample"] != pytest.approx(views["block"], rel=1e-3)
    assert set(views["variants"]["block"]) == {"all_positions", "per_token", "in_sample"}


def test_held_out_scoring_collects_sink_and_non_sink_grams_in_one_pass_as_two_captures_would():
    """The sink positions' kept rows come from hooks on the same forward pass as the held-out Grams; the Grams and
    the rows equal a capture of their own positions alone, bit for bit, and no Gram of the sink rows is formed
    (reading one is an error, never zeros). Preparing the scoring inputs releases the held-out Grams' float64
    panels and keeps float32 copies equal to them."""
    from types import SimpleNamespace

    from measure.removal.study import StudySettings, held_out_scoring
    from measure.removal.views import SINK_POSITIONS

    model = _toy()
    ids = torch.cat(token_batches(1, length=24))
    batches = list(ids.split(2))
    scoring = held_out_scoring(model, describe(model), SimpleNamespace(input_ids=ids), capture(model, batches),
                               None, StudySettings(batch_size=2, block_sequences=1))  # fmt: skip
    alone = {"held_out": capture(model, batches, positions=slice(SINK_POSITIONS, None)),
             "sinks": capture(model, batches, positions=slice(0, SINK_POSITIONS),
                              keep_rows=SINK_POSITIONS * ids.shape[0])}  # fmt: skip
    for name, reference in alone.items():
        collected = getattr(scoring, name)
        assert collected.grams.keys() == reference.grams.keys()
        for group, gram in reference.grams.items():
            assert collected.grams[group].tokens == gram.tokens
            if name == "sinks":
                assert torch.equal(collected.grams[group].sample, gram.sample)
                with pytest.raises(PvqError, match="keeps input rows only"):
                    _ = collected.grams[group].gram
            else:
                assert torch.equal(collected.grams[group].gram, gram.gram)
    assert scoring.sinks.grams[next(iter(alone["sinks"].grams))].tokens == SINK_POSITIONS * ids.shape[0]
    group_of = scoring.held_out.group_of
    scoring.prepare(list(group_of))
    for name, group in group_of.items():
        headline, _, rows = scoring.scoring_inputs(name)
        assert torch.equal(headline, alone["held_out"].grams[group].gram.float())
        assert torch.equal(rows, alone["sinks"].grams[group].sample.float())
        with pytest.raises(PvqError, match="released"):
            _ = scoring.held_out.grams[group].gram
