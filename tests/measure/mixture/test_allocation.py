"""Per-layer allocation: the applied allocation's size recomputed from the compressed weights, per-layer spec
terms, the single-layer KL sensitivity against a full evaluation, and one clear error for each bad input."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_inputs import text_ids, token_batches, windows_of
from tiny_models import save_tiny_model, tiny_model
from transformers import AutoModelForCausalLM

from measure.capture.statistics import capture
from measure.compress.apply import apply_spec, weights_installed
from measure.compress.spec import parse_spec
from measure.evaluation.perplexity import evaluate_perplexity
from measure.evaluation.residual import ResidualStreamEvaluator
from measure.mixture.file import allocation_spec, check_allocation, read_allocation, write_allocation
from measure.mixture.inputs import allocation_weights, measure_menu
from measure.mixture.menu import parse_menu
from measure.mixture.sensitivity import PROBE, kl_sensitivity
from measure.mixture.solve import allocate, cheapest_bits, check_budget
from measure.models.architecture import describe
from measure.models.weight_grid import distinct_per_block
from pvq.cli import main
from theory.errors import PvqError

MENU = "keep,rtn:3:g16,gptq:4:g16,sparsegpt:0.5"


def _measured(model: torch.nn.Module, evaluator: ResidualStreamEvaluator | None = None):
    batches = token_batches(3)
    return batches, measure_menu(model, batches, capture(model, batches), parse_menu(MENU), evaluator)


def recomputed_bits(original: torch.Tensor, compressed: torch.Tensor, option: str) -> float:
    """Bits of one layer read off its compressed weight: unchanged → 16 per weight; b-bit in groups of g → at most
    2^b distinct values per group, b per weight plus one 16-bit scale per group; pruned → 16 per non-zero."""
    if option == "keep":
        assert torch.equal(original, compressed)
        return 16.0 * original.numel()
    head, *tokens = option.split(":")
    if head == "sparsegpt":
        return 16.0 * int((compressed != 0).sum())
    bits, group = int(tokens[0]), int(tokens[1].removeprefix("g"))
    assert int(distinct_per_block(compressed, group).max()) <= 2**bits
    groups = compressed.shape[0] * math.ceil(compressed.shape[1] / group)
    return bits * compressed.numel() + 16.0 * groups


def test_the_applied_allocation_costs_what_its_accounting_says() -> None:
    model = tiny_model("llama")
    batches, measured = _measured(model)
    options = parse_menu(MENU)
    mixtures = 0
    for budget in (4.25, 4.6, 6.0, 9.0, 12.0):
        allocation = allocate(measured.ledger, measured.bits, options, measured.sensitivities["energy"], budget)
        table = allocation.table
        mixtures += table["option"].nunique() > 1
        compressed = copy.deepcopy(model)
        report = apply_spec(compressed, allocation_spec(table), batches, calibration="parallel")
        originals = {ref.name: ref.weight() for ref in describe(model).linears}
        chosen = table.set_index("layer")["option"]
        spent = sum(recomputed_bits(originals[ref.name], ref.weight(), chosen[ref.name])
                    for ref in describe(compressed).linears)  # fmt: skip
        total = table["parameters"].sum()
        assert abs(spent / total - allocation.summary["bits_per_linear_weight"]) < 1e-6
        assert abs(report.size["linear_bits_per_weight"] - allocation.summary["bits_per_linear_weight"]) < 1e-6
        assert allocation.summary["bits_per_linear_weight"] <= budget + 1e-12
        assert math.isclose(allocation.summary["predicted_damage"], table["predicted_damage"].sum(), rel_tol=1e-12)
        assert allocation.summary["lagrangian_lower_bound"] <= allocation.summary["predicted_damage"] * (1 + 1e-12)
    assert mixtures >= 2  # the budgets between the options' sizes mix options


def test_no_uniform_option_that_fits_predicts_less_damage_than_the_allocation() -> None:
    model = tiny_model("llama")
    _, measured = _measured(model)
    options = parse_menu(MENU)
    sensitivity = measured.sensitivities["energy"]
    for budget in (4.0, 5.0, 8.0, 16.0):
        allocation = allocate(measured.ledger, measured.bits, options, sensitivity, budget)
        for option in options:
            bits = measured.bits[option.text]
            if (bits * measured.bits["parameters"]).sum() / measured.bits["parameters"].sum() <= budget:
                rows = measured.ledger[measured.ledger["term"] == option.text]
                errors = rows.set_index("layer")["relative_error"]
                uniform = 0.0 if option.step is None else float((errors * sensitivity[errors.index]).sum())
                assert allocation.summary["predicted_damage"] <= uniform * (1 + 1e-9) + 1e-15


def test_per_layer_terms_compress_exactly_the_named_layers() -> None:
    model = tiny_model("llama")
    before = {ref.name: ref.weight().clone() for ref in describe(model).linears}
    names = ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj"]
    apply_spec(model, f"rtn:3:g16@layer={names[0]}+sparsegpt:0.5+gptq:4:g16@layer={names[1]}", token_batches(3))
    for ref in describe(model).linears:
        assert torch.equal(ref.weight(), before[ref.name]) == (ref.name not in names), ref.name
    assert (describe(model).linears[7].weight() == 0).float().mean() >= 0.5


@pytest.mark.parametrize(
    ("spec", "message"),
    [("rtn:3@layer=a+gptq:4@layer=a", "both compress"), ("rtn:3@layer=a+gptq:4@mlp", "beside per-layer terms"),
     ("rtn:3@layer=", "unknown scope")],
)  # fmt: skip
def test_bad_per_layer_specs_are_one_clear_error(spec: str, message: str) -> None:
    with pytest.raises(PvqError, match=message):
        parse_spec(spec)


def test_a_layer_the_model_lacks_is_an_error_before_anything_is_compressed() -> None:
    model = tiny_model("llama")
    before = {ref.name: ref.weight().clone() for ref in describe(model).linears}
    spec = "rtn:3:g16@layer=model.layers.0.mlp.up_proj+rtn:3:g16@layer=model.layers.9.mlp.up_proj"
    with pytest.raises(PvqError, match=r"lacks: model\.layers\.9\.mlp\.up_proj"):
        apply_spec(model, spec)
    assert all(torch.equal(ref.weight(), before[ref.name]) for ref in describe(model).linears)


def test_the_kl_sensitivity_is_the_probed_models_kl_per_unit_local_error() -> None:
    model = tiny_model("llama")
    windows = windows_of(text_ids(), 32)
    batches = token_batches(3)
    captured = capture(model, batches)
    layer = "model.layers.0.self_attn.v_proj"
    probes = kl_sensitivity(model, ResidualStreamEvaluator(model, windows), captured, [layer]).iloc[0]
    probed = copy.deepcopy(model)
    apply_spec(probed, f"{PROBE}@layer={layer}", batches, calibration="parallel")
    kl = evaluate_perplexity(probed, windows, model).kl_to_reference_nats
    assert math.isclose(probes["probe_kl_nats"], kl, rel_tol=1e-4)
    assert math.isclose(probes["sensitivity"] * probes["probe_relative_error"], kl, rel_tol=1e-4)
    fresh = describe(tiny_model("llama")).linears
    assert all(torch.equal(a.weight(), b.weight()) for a, b in zip(describe(model).linears, fresh, strict=True))


# --- bad input --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("menu", "message"),
    [("keep,fancy:3", "unknown method 'fancy'"), ("keep,gptq:4@mlp", "carries a scope"),
     ("keep,keep", "listed twice"), ("keep,remove:bi:2", "one layer term"), ("keep,gptq:99", "gptq:99")],
)  # fmt: skip
def test_bad_menus_are_one_clear_error(menu: str, message: str) -> None:
    with pytest.raises(PvqError, match=message):
        parse_menu(menu)


def test_budgets_out_of_range_are_one_clear_error_each() -> None:
    model = tiny_model("llama")
    cheapest = cheapest_bits(model, parse_menu(MENU))
    with pytest.raises(PvqError, match="above 16"):
        check_budget(16.5, cheapest)
    with pytest.raises(PvqError, match="below the cheapest allocation"):
        check_budget(cheapest - 0.01, cheapest)
    check_budget(cheapest, cheapest)


def _allocation_file(folder: Path) -> tuple[torch.nn.Module, Path]:
    model = tiny_model("llama")
    _, measured = _measured(model)
    allocation = allocate(measured.ledger, measured.bits, parse_menu(MENU), measured.sensitivities["energy"], 6.0)
    return model, write_allocation(allocation, folder / "alloc.parquet", {"model": "tiny"})


@pytest.mark.parametrize(
    ("edit", "message"),
    [(lambda t: t.drop(columns="option"), "lacks column"), (lambda t: pd.concat([t, t.head(1)]), "twice"),
     (lambda t: t.assign(option="fancy:3"), "unknown method"), (lambda t: t.head(0), "no rows"),
     (lambda t: t.assign(bits_per_linear_weight=-1.0), "bits_per_linear_weight"),
     (lambda t: t.assign(parameters=0.5), "parameters")],
)  # fmt: skip
def test_malformed_allocation_files_are_one_clear_error_each(tmp_path: Path, edit, message: str) -> None:
    _, path = _allocation_file(tmp_path)
    edit(pd.read_parquet(path)).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(PvqError, match=message):
        read_allocation(tmp_path / "bad.csv")


def test_an_allocation_that_disagrees_with_the_model_is_refused(tmp_path: Path) -> None:
    model, path = _allocation_file(tmp_path)
    table = read_allocation(path)
    renamed = table.assign(layer=table["layer"].str.replace("layers.1.", "layers.7.", regex=False))
    with pytest.raises(PvqError, match=r"lacks: model\.layers\.7"):
        check_allocation(renamed, allocation_spec(table), model)
    resized = table.assign(parameters=table["parameters"] + 1)
    with pytest.raises(PvqError, match="parameters at"):
        check_allocation(resized, allocation_spec(table), model)


def test_the_command_writes_nothing_on_bad_input_and_an_allocation_eval_reads(tmp_path: Path) -> None:
    folder = save_tiny_model("llama", tmp_path / "tiny")
    out = tmp_path / "alloc.parquet"
    common = ["allocate", "--model", str(folder), "--device", "cpu", "--sequences", "1", "--sensitivity", "energy",
              "--menu", MENU, "--out", str(out)]  # fmt: skip
    for bad in (["--budget", "2"], ["--budget", "17"], ["--budget", "5", "--menu", "keep,fancy"]):
        assert main([*common, *bad]) == 2
        assert not out.exists() and not out.with_suffix(".json").exists()
    assert main([*common, "--budget", "5"]) == 0
    table = read_allocation(out)
    assert set(table["option"]) <= set(MENU.split(","))
    evaluated = ["eval", "--model", str(folder), "--compress", str(out), "--ppl", "--window", "64",
                 "--max-windows", "1", "--device", "cpu", "--out", str(tmp_path / "eval")]  # fmt: skip
    assert main(evaluated) == 0
    results = pd.read_parquet(tmp_path / "eval" / "eval.parquet")
    assert results["spec"].str.startswith("allocation:alloc.parquet:").all()


# --- block removal in the menu ----------------------------------------------------------------------------------

REMOVAL_MENU = "keep,rtn:3:g16,remove"


def _removal_allocation(budget: float):
    model = tiny_model("llama", num_hidden_layers=4)
    batches = token_batches(3)
    evaluator = ResidualStreamEvaluator(model, windows_of(text_ids(), 32))
    options = parse_menu(REMOVAL_MENU)
    measured = measure_menu(model, batches, capture(model, batches), options, evaluator)
    allocation = allocate(measured.ledger, measured.bits, options, measured.sensitivities["kl"], budget, "kl",
                          measured.removal["kl"])  # fmt: skip
    return model, batches, evaluator, measured, allocation


def test_the_removal_damage_is_the_kl_of_the_model_without_the_block() -> None:
    model, _, _, measured, _ = _removal_allocation(8.0)
    for block in (0, 3):
        skipped = copy.deepcopy(model)
        skipped.model.layers = torch.nn.ModuleList(
            [layer for index, layer in enumerate(skipped.model.layers) if index != block]
        )
        reference = evaluate_perplexity(skipped, windows_of(text_ids(), 32), model).kl_to_reference_nats
        assert math.isclose(measured.removal["kl"][block], reference, rel_tol=1e-4)
    energy = measured.sensitivities["energy"]
    assert math.isclose(measured.removal["energy"].sum(), energy.sum(), rel_tol=1e-12)  # every layer in one block


def test_removal_options_remove_whole_blocks_that_reload_and_cost_what_the_accounting_says(tmp_path: Path) -> None:
    """A budget below the quantizer's size forces removal: the removed blocks' linears say ``remove`` (0 bits), the
    spec removes them after the per-layer terms, the compressed model's weights cost exactly the allocation's bits
    over the original linear weights, and ``save_pretrained`` + plain ``from_pretrained`` give the same logits."""
    model, batches, _, _, allocation = _removal_allocation(2.0)
    table = allocation.table
    removed = allocation.summary["removed_blocks"]
    assert removed and set(table.loc[table["option"] == "remove", "block"]) == set(removed)
    assert (
        table.groupby("block")["option"].agg(lambda o: (o == "remove").all() or not (o == "remove").any())
    ).all()
    spec = allocation_spec(table)
    assert spec.text.endswith(f"remove:blocks={','.join(map(str, sorted(removed)))}")
    compressed = copy.deepcopy(model)
    apply_spec(compressed, spec, batches, calibration="parallel")
    kept = [block for block in range(4) if block not in removed]
    assert compressed.config.num_hidden_layers == len(kept) == len(compressed.model.layers)
    originals = {ref.name: ref.weight() for ref in describe(model).linears}
    chosen = table.set_index("layer")["option"]
    spent = 0.0
    for ref in describe(compressed).linears:  # block i of the compressed model is block kept[i] of the original
        source = ref.name.replace(f"layers.{ref.block_index}.", f"layers.{kept[ref.block_index]}.", 1)
        spent += recomputed_bits(originals[source], ref.weight(), chosen[source])
    assert abs(spent / table["parameters"].sum() - allocation.summary["bits_per_linear_weight"]) < 1e-6
    assert allocation.summary["bits_per_linear_weight"] <= 2.0 + 1e-12
    compressed.save_pretrained(tmp_path / "removed")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "removed").eval()
    ids = text_ids()[:24].unsqueeze(0)
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, compressed(ids).logits, atol=1e-5)


def test_a_block_removed_in_part_is_refused(tmp_path: Path) -> None:
    model, _, _, _, allocation = _removal_allocation(2.0)
    table = allocation.table
    block = allocation.summary["removed_blocks"][0]
    first = table.index[table["block"] == block][0]
    partial = table.copy()
    partial.loc[first, ["option", "bits_per_linear_weight"]] = ["keep", 16.0]
    with pytest.raises(PvqError, match=f"removes block {block} but does not say 'remove'"):
        check_allocation(partial, allocation_spec(partial), model)
    options = parse_menu(REMOVAL_MENU)
    _, measured = _measured(model)
    with pytest.raises(PvqError, match="no block removal damage"):
        allocate(measured.ledger, measured.bits, options, measured.sensitivities["energy"], 4.0)


def test_installing_the_kept_weights_is_applying_the_allocation_spec() -> None:
    """The figures install an allocation from the ledger's kept weights; that is the model ``apply_spec`` makes
    from the allocation's spec with calibration on the original stream (same weights, same removed blocks)."""
    model = tiny_model("llama", num_hidden_layers=4)
    batches = token_batches(3)
    options = parse_menu("keep,rtn:3:g16,sparsegpt:0.5,remove")
    measured = measure_menu(model, batches, capture(model, batches), options, None, keep_weights=True)
    allocation = allocate(measured.ledger, measured.bits, options, measured.sensitivities["energy"], 3.0, "energy",
                          measured.removal["energy"])  # fmt: skip
    table = allocation.table
    assert {"rtn:3:g16", "sparsegpt:0.5"} & set(table["option"])
    pairs, removed = allocation_weights(model, measured, options, table)
    assert removed and removed == allocation.summary["removed_blocks"]
    applied = copy.deepcopy(model)
    apply_spec(applied, allocation_spec(table).text.split("+remove:")[0], batches, calibration="parallel")
    weights = {ref.name: ref.weight() for ref in describe(applied).linears}
    installed_names = {ref.name for ref, _ in pairs}
    assert installed_names == set(table.loc[~table["option"].isin(["keep", "remove"]), "layer"])
    for ref, weight in pairs:
        assert torch.equal(weights[ref.name], weight)
    with weights_installed(pairs):
        assert all(torch.equal(ref.weight(), weight) for ref, weight in pairs)
    assert all(
        torch.equal(a.weight(), b.weight())
        for a, b in zip(
            describe(model).linears, describe(tiny_model("llama", num_hidden_layers=4)).linears, strict=True
        )
    )


def test_forked_probes_agree_with_probes_in_one_process() -> None:
    model = tiny_model("llama")
    batches = token_batches(3)
    captured = capture(model, batches)
    evaluator = ResidualStreamEvaluator(model, windows_of(text_ids(), 32))
    alone = kl_sensitivity(model, evaluator, captured, workers=1)
    forked = kl_sensitivity(model, evaluator, captured, workers=2)
    assert list(alone["layer"]) == list(forked["layer"]) and len(alone) == len(describe(model).linears)
    for column in ("probe_relative_error", "probe_kl_nats", "sensitivity"):
        assert np.allclose(alone[column], forked[column], rtol=1e-5, atol=0.0)
    fresh = describe(tiny_model("llama")).linears
    assert all(torch.equal(a.weight(), b.weight()) for a, b in zip(describe(model).linears, fresh, strict=True))
