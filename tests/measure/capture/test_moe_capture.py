"""Expert capture: routed and router-weighted Grams match the experts' real inputs, outputs and routing."""

from __future__ import annotations

import pytest
import torch
from method_toys import direct_output_error
from tiny_inputs import token_batches
from tiny_models import tiny_model

from measure.capture.experts import ExpertCapture
from measure.capture.statistics import capture
from measure.compress.apply import apply_spec
from measure.ledger import build_ledger
from measure.models.architecture import describe
from theory.errors import PvqError

MOE_FAMILIES = ("mixtral", "qwen2_moe", "olmoe", "gpt_oss")


def _record_experts(model: torch.nn.Module) -> list[tuple[tuple, torch.Tensor]]:
    """Forward hook on block 0's experts module: its (hidden, top_k_index, top_k_weights) and output per call."""
    calls: list[tuple[tuple, torch.Tensor]] = []

    def keep(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        calls.append((args, output))

    describe(model).blocks[0].mlp.experts.module.register_forward_hook(keep)
    return calls


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_expert_grams_reproduce_the_experts_inputs_and_output(family: str) -> None:
    model = tiny_model(family)
    calls = _record_experts(model)
    experts = ExpertCapture(keep_rows=10_000)
    capture(model, token_batches(2), block_hooks=experts.hooks)
    block = describe(model).blocks[0]
    hidden = torch.cat([args[0] for args, _ in calls]).double()
    index = torch.cat([args[1] for args, _ in calls])
    weights = torch.cat([args[2] for args, _ in calls]).double()
    output = torch.cat([out for _, out in calls]).double()
    refs = {ref.name: ref for ref in block.mlp.linears}
    rebuilt = torch.zeros_like(output)
    for expert in range(block.mlp.experts.count):
        name = f"{block.mlp.experts.name}.{expert}"
        hits = index == expert
        routed = hits.any(dim=-1)
        gate = (weights * hits).sum(dim=-1)[routed]
        x = hidden[routed]
        assert experts.routed_tokens[name] == int(routed.sum())
        inputs = experts.grams[f"{name}:input"]
        torch.testing.assert_close(inputs.gram, x.T @ x, rtol=1e-5, atol=1e-5)
        weighted = experts.weighted[f"{name}:input"].gram
        torch.testing.assert_close(weighted, (x * gate[:, None]).T @ (x * gate[:, None]), rtol=1e-5, atol=1e-6)
        down_inputs = experts.grams[f"{name}.down:input"].sample
        down = refs[f"{name}.down"]
        bias = down.bias() if down.bias() is not None else 0.0
        rebuilt[routed] += gate[:, None] * (down_inputs @ down.weight().double().T + bias)
    assert (rebuilt - output).abs().max() <= 1e-5 * output.abs().max()
    assert sum(experts.routed_tokens.values()) == 2 * index.numel()  # two blocks, each token routed top-k times


def test_route_all_gives_every_expert_every_token() -> None:
    model = tiny_model("olmoe")
    routed, everywhere = ExpertCapture("routed"), ExpertCapture("all")
    captured = capture(model, token_batches(2), block_hooks=routed.hooks)
    capture(model, token_batches(2), block_hooks=everywhere.hooks)
    block = describe(model).blocks[1]
    moe_input = captured.grams[block.mlp.router.shared_input_group]
    for ref in (r for r in block.mlp.linears if r.role == "expert.gate"):
        gram = everywhere.gram_for(ref)
        assert gram.tokens == moe_input.tokens == 64
        torch.testing.assert_close(gram.gram, moe_input.gram)
        weighted = everywhere.gram_for(ref, weighted=True)
        torch.testing.assert_close(weighted.gram, routed.gram_for(ref, weighted=True).gram)
    assert everywhere.routed_tokens == routed.routed_tokens


def _starve_expert(model: torch.nn.Module, expert: int) -> str:
    """Reroute block 0 so that ``expert`` never receives a token (its slots go to the next expert)."""
    experts = describe(model).blocks[0].mlp.experts

    def reroute(module: torch.nn.Module, args: tuple) -> tuple:
        hidden, index, weights = args
        return hidden, torch.where(index == expert, (expert + 1) % experts.count, index), weights

    experts.module.register_forward_pre_hook(reroute)
    return f"{experts.name}.{expert}"


def test_experts_without_tokens_are_reported() -> None:
    model = tiny_model("mixtral")
    starved = _starve_expert(model, 3)
    experts = ExpertCapture()
    capture(model, token_batches(2), block_hooks=experts.hooks)
    assert experts.empty_experts() == [starved]
    assert experts.token_table().set_index("expert").loc[starved, "routed_tokens"] == 0
    ledger = build_ledger(model, token_batches(2), "wanda:0.5")
    assert ledger.skipped_layers == [f"{starved}.gate", f"{starved}.up", f"{starved}.down"]
    assert not ledger.table["layer"].str.startswith(starved + ".").any()
    with pytest.raises(PvqError, match=f"no calibration token was routed to {starved}"):
        apply_spec(model, "gptq:4@expert", token_batches(2))


def _moe_inputs_after(compressed: torch.nn.Module, block: int) -> tuple[torch.Tensor, dict]:
    """The experts' input rows (float64) of ``block`` in a fresh starved Mixtral whose earlier blocks hold
    ``compressed``'s weights, and the original weights of that block's expert layers by name."""
    model = tiny_model("mixtral")
    _starve_expert(model, 3)
    for ref, done in zip(describe(model).linears, describe(compressed).linears, strict=True):
        if ref.block_index < block:
            ref.set_weight(done.weight())
    rows: list[torch.Tensor] = []
    experts = describe(model).blocks[block].mlp.experts.module
    experts.register_forward_pre_hook(lambda module, args: rows.append(args[0].reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        for batch in token_batches(2):
            model(batch)
    weights = {ref.name: ref.weight().double() for ref in describe(model).blocks[block].mlp.linears}
    return torch.cat(rows).double(), weights


def test_route_all_calibrates_a_starved_expert_on_every_token() -> None:
    """With route 'all' each expert's error is measured on all 64 tokens: gate/up on the MoE input x, down on
    silu(x W_gateᵀ) ⊙ (x W_upᵀ) of the original expert, with the earlier blocks already compressed."""
    model = tiny_model("mixtral")
    starved = _starve_expert(model, 3)
    report = apply_spec(model, "gptq:4@expert", token_batches(2), expert_route="all")
    assert report.experts_without_tokens == [starved]
    assert set(report.layers["tokens"]) == {64}
    compressed = {ref.name: ref.weight().double() for ref in describe(model).linears}
    for block, rows in report.layers.groupby("block"):
        x, original = _moe_inputs_after(model, block)
        for row in rows.itertuples():
            expert = row.layer.rsplit(".", 1)[0]
            hidden = torch.nn.functional.silu(x @ original[f"{expert}.gate"].T) * (x @ original[f"{expert}.up"].T)
            inputs = hidden if row.layer.endswith(".down") else x
            direct = direct_output_error(original[row.layer], compressed[row.layer], inputs)
            assert row.relative_error == pytest.approx(direct, rel=1e-5), row.layer


def test_bad_route_is_a_clear_error() -> None:
    with pytest.raises(PvqError, match="unknown expert route 'some'"):
        ExpertCapture("some")
