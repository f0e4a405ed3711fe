"""`pvq allocate`: the per-layer allocation of a menu of compression options that minimises the predicted damage
under a size budget in bits per weight (:mod:`measure.mixture`).

Example: ``pvq allocate --model smollm2-135m --budget 4 --menu keep,gptq:3:g128,gptq:4:g128,sparsegpt:0.5
--out alloc.parquet``, then ``pvq eval --compress alloc.parquet --ppl``. Writes the allocation table (one row per
linear layer) with a provenance sidecar (model, calibration, menu, sensitivity, predicted damage, Lagrangian lower
bound); nothing is written when any input is bad.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from measure.capture.placement import load_placed
from measure.capture.statistics import capture
from measure.data.text import calibration_text
from measure.evaluation.protocols import FIGURES_CALIBRATION, EvaluationProtocol, model_calibration
from measure.evaluation.residual import ResidualStreamEvaluator
from measure.mixture.file import write_allocation
from measure.mixture.inputs import check_sensitivity, measure_menu
from measure.mixture.menu import DEFAULT_MENU, parse_menu
from measure.mixture.solve import allocate, cheapest_bits, check_budget
from measure.models.defaults import DEFAULT_MODEL
from measure.records.provenance import collect
from pvq.commands.common import add_device_arguments, placement
from theory.errors import PvqError

HELP = "Per-layer allocation of compression options under a size budget (bits per weight), solved exactly."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"name, folder or .gguf (default {DEFAULT_MODEL})")
    parser.add_argument("--budget", type=float, required=True, help="bits per weight over the block linear layers")
    parser.add_argument("--menu", default=DEFAULT_MENU, help=f"comma-separated options (default {DEFAULT_MENU})")
    parser.add_argument(
        "--sensitivity", default="kl", help="c_l: kl (single-layer RTN-3 probes, end to end) or energy (output "
        "energy share) (default kl)",
    )  # fmt: skip
    parser.add_argument("--sequences", type=int, default=8, help="calibration windows of 512 tokens (default 8)")
    parser.add_argument("--windows", type=int, default=1, help="calibration windows kl probes score (default 1)")
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the ledger (default 1)")
    parser.add_argument("--out", required=True, help="allocation file to write (.parquet)")
    add_device_arguments(parser)


def run(args: argparse.Namespace) -> int:
    options = parse_menu(args.menu)
    kind = check_sensitivity(args.sensitivity)
    if Path(args.out).suffix != ".parquet":
        raise PvqError(f"--out must name a .parquet file, got {args.out!r}")
    check_budget(args.budget, 0.0)
    place = placement(args, capture_mode="full")
    loaded = load_placed(args.model, place)
    check_budget(args.budget, cheapest_bits(loaded.model, options))
    batches, protocol = model_calibration(loaded, replace(FIGURES_CALIBRATION, sequences=args.sequences))
    evaluator = None
    if kind == "kl":
        windows = EvaluationProtocol(512, args.windows).windows(loaded, calibration_text)
        evaluator = ResidualStreamEvaluator(loaded.model, windows)
    captured = capture(loaded.model, batches)
    measured = measure_menu(loaded.model, batches, captured, options, evaluator, args.workers, log=print)
    allocation = allocate(measured.ledger, measured.bits, options, measured.sensitivities[kind], args.budget, kind,
                          measured.removal.get(kind))  # fmt: skip
    provenance = collect(**loaded.describe(), calibration=protocol.as_dict(), evaluation_windows=args.windows,
                         calibration_mode="parallel", **place.as_dict())  # fmt: skip
    path = write_allocation(allocation, args.out, provenance)
    summary = allocation.summary
    print(f"budget {args.budget:g} bpw -> {summary['bits_per_linear_weight']:.6f} bpw spent; predicted damage "
          f"{summary['predicted_damage']:.6g} (lower bound {summary['lagrangian_lower_bound']:.6g})")  # fmt: skip
    print(allocation.table.groupby("option")["parameters"].sum().div(summary["parameters"]).to_string())
    if summary["removed_blocks"]:
        print(f"removed blocks: {', '.join(map(str, summary['removed_blocks']))}")
    print(f"allocation: {path}")
    return 0
