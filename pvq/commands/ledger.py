"""`pvq ledger`: per-layer error ledger of pruning and quantization methods on real activations.

Writes ``OUT/ledger.parquet`` with its provenance sidecar ``OUT/ledger.json`` (and, with ``--weight-study``,
``OUT/weight_study.parquet``): see :mod:`measure.ledger` for the columns and the error definition.
"""

from __future__ import annotations

import argparse

from measure import ledger as ledgers
from measure.capture.placement import load_placed
from measure.compress.parallel import method_workers
from measure.compress.spec import describe_steps, parse_term_list
from measure.evaluation.protocols import LEDGER_CALIBRATION, model_calibration
from measure.models.architecture import describe
from measure.models.defaults import DEFAULT_MODEL
from measure.models.weight_grid import detect_model_grid
from measure.records.provenance import collect
from measure.records.store import write_table
from pvq.commands.common import (
    add_calibration_arguments,
    add_device_arguments,
    add_mode_argument,
    calibration_protocol,
    placement,
)

HELP = "Per-layer error ledger of pruning and quantization methods on real activations."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="default model name, local folder, .gguf or hub id")
    parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated spec terms, e.g. magnitude:0.5,sparsegpt:2:4,gptq:4:g128,nf4 "
        "(default: the 23 settings of measure.ledger.DEFAULT_METHODS)",
    )
    add_calibration_arguments(parser, LEDGER_CALIBRATION)
    add_mode_argument(parser)
    parser.add_argument("--layers", default=None, help="regular expression: only layers whose name matches")
    parser.add_argument(
        "--expert-route", choices=("routed", "all"), default="routed",
        help="tokens in an expert's Gram: those routed to it, or all (MoE models)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="torch seed (the calibration windows are fixed)")
    parser.add_argument("--weight-study", action="store_true", help="also write the weight-tensor study (Fig. 3)")
    parser.add_argument(
        "--workers", type=int, default=None,
        help="processes sharing the methods phase (default: one per CPU core; 1 = this process only)",
    )  # fmt: skip
    parser.add_argument("--out", required=True, help="output directory")
    add_device_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch


    place = placement(args, args.mode)
    steps = parse_term_list(args.methods or ledgers.DEFAULT_METHODS)
    torch.manual_seed(args.seed)
    loaded = load_placed(args.model, place)
    batches, protocol = model_calibration(loaded, calibration_protocol(args, LEDGER_CALIBRATION))
    arch = describe(loaded.model)
    grid = detect_model_grid((ref.name, ref.weight()) for ref in arch.linears)
    ledger = ledgers.build_ledger(
        loaded.model, batches, steps, place, layers=args.layers, expert_route=args.expert_route,
        model_id=loaded.model_id, progress=True, workers=args.workers,
    )  # fmt: skip
    provenance = collect(
        **loaded.describe(),
        grid_detection=grid.as_dict(),
        calibration=protocol.as_dict(),
        calibration_tokens=sum(batch.numel() for batch in batches),
        seed=args.seed,
        **place.as_dict(),
        methods=describe_steps(steps),
        layers=args.layers,
        expert_route=args.expert_route,
        experts_without_tokens=ledger.experts.empty_experts(),
        skipped_layers=ledger.skipped_layers,
        error_definition=ledgers.ERROR_DEFINITION,
        kurtosis_definition=ledgers.KURTOSIS_DEFINITION,
        seconds=ledger.seconds,
        torch_threads=torch.get_num_threads(),
        method_workers=method_workers(args.workers),
    )
    out = Path(args.out)
    path = write_table(ledger.table, out / "ledger.parquet", provenance)
    print(f"{len(ledger.table)} rows ({ledger.table['layer'].nunique()} layers x {len(steps)} methods) -> {path}")
    print(", ".join(f"{part} {value:.1f} s" for part, value in ledger.seconds.items()))
    if args.weight_study:
        study = ledgers.weight_tensor_study(loaded.model, layers=args.layers, progress=True)
        study_provenance = {**provenance, "study": "weight tensor SQNR, INT-b vs pruning (Fig. 3)"}
        study_path = write_table(study, out / "weight_study.parquet", study_provenance)
        print(f"{len(study)} rows -> {study_path}")
    return 0
