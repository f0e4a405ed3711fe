"""`pvq remove`: block / sublayer / expert removal by an importance metric, and the removal-vs-bounds study.

Examples::

    pvq remove --model smollm2-135m --metric bi --blocks 4 --out removed/     # ShortGPT: 4 lowest-BI blocks
    pvq remove --model smollm2-135m --metric attn --indices 3,7 --out drop/   # attention of blocks 3 and 7
    pvq remove --model some-moe --experts 2 --out pruned/                     # 2 experts per MoE block
    pvq remove --model some-vlm --tower vision --indices 3 --out smaller/     # vision-encoder block 3
    pvq remove --model smollm2-135m --study --out results/removal             # the whole study

A removal prints the metric's ranking and writes, with ``--out``, a checkpoint that plain ``from_pretrained``
loads (plus ``pvq_removal.json``). ``--study`` writes the tables of :func:`measure.removal.study.run_study`
stacked in ``OUT/removal_study.parquet`` with its provenance sidecar (rewritten as each table becomes final; at
the end with the ``base`` part, the shape ``pvq figures`` stores: :mod:`measure.removal.stacked`, a part read back
with :func:`measure.removal.stacked.study_part`), ``OUT/summary.json``, and prints the summaries.
"""

from __future__ import annotations

import argparse
from typing import Any

from measure.capture.placement import Placement, load_placed
from measure.compress.importance import choose_units, get_ordering, measure_importance
from measure.compress.remove import (
    SHAPE_CHANGING_PARTS,
    drop_experts,
    remove_part,
    remove_units,
    removed_fraction,
    save_removed,
)
from measure.evaluation.protocols import STUDY_CALIBRATION, EvaluationProtocol, model_calibration
from measure.models.architecture import TOWERS, describe
from measure.models.defaults import DEFAULT_MODEL
from measure.records.atomic import write_text_atomic
from measure.records.provenance import collect
from measure.records.store import write_table
from measure.removal.stacked import STUDY_TABLE, stack_parts, stacked_study
from measure.removal.study import StudySettings, check_for_model, check_settings, run_study, unit_table
from pvq.commands.common import (
    add_calibration_arguments,
    add_device_arguments,
    add_mode_argument,
    calibration_protocol,
    placement,
)
from theory.accounting import removal_bits_per_weight
from theory.errors import PvqError

HELP = "Block/sublayer importance and layer removal measured against the bounds."
DEFAULT_STUDY_OUT = "results/removal"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"name, folder or .gguf (default {DEFAULT_MODEL})")
    parser.add_argument(
        "--metric", default="bi",
        help="removal rule: bi, angular, sqnr, reverse, random (blocks); attn, mlp (sublayers); default bi",
    )  # fmt: skip
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--blocks", type=int, help="how many units the metric removes")
    which.add_argument(
        "--indices",
        help="comma-separated blocks to remove (sublayers with --metric attn/mlp); with --tower vision, "
        f"naming {' or '.join(SHAPE_CHANGING_PARTS)} explains why they cannot go",
    )
    parser.add_argument(
        "--tower", choices=TOWERS, default="language",
        help="whose blocks --indices names: the language decoder (default) or a VLM's vision encoder",
    )  # fmt: skip
    which.add_argument("--experts", type=int, help="drop this many experts of lowest router score per MoE block")
    parser.add_argument("--study", action="store_true", help="run the removal-vs-bounds study instead")
    parser.add_argument("--out", help=f"checkpoint folder, or the study's tables (default {DEFAULT_STUDY_OUT})")
    add_calibration_arguments(parser, STUDY_CALIBRATION)
    parser.add_argument("--eval-windows", type=int, default=16, help="study: evaluation windows (default 16)")
    parser.add_argument("--window", type=int, default=512, help="study: evaluation window length (default 512)")
    parser.add_argument("--max-removed", type=int, default=8, help="study: removal levels 1..N (default 8)")
    parser.add_argument(
        "--probe-windows", type=int, default=4,
        help="study: first windows used when removing each block / sublayer alone (default 4)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the random ordering (default 0)")
    parser.add_argument(
        "--views", default="layer_energy,layer_parameters,block,end_to_end",
        help="study: views measured (layer_energy, layer_parameters, block, end_to_end; default all)",
    )  # fmt: skip
    parser.add_argument(
        "--mask-conventions", default="free,entropy",
        help="study: how pruners pay for their mask: free, entropy, bitmap (default free,entropy)",
    )  # fmt: skip
    parser.add_argument("--bits", default="2-16", help="study: quantizer widths, 2-16 or a list like 2,3,4,8")
    parser.add_argument("--groups", default="g128,channel", help="study: quantizer groups (default g128,channel)")
    parser.add_argument("--pruner", default="sparsegpt", help="study: pruning methods (default sparsegpt)")
    add_device_arguments(parser)
    add_mode_argument(parser)


def study_settings(args: argparse.Namespace) -> Any:
    """:class:`measure.removal.study.StudySettings` from the study's options, checked (except against the
    model's block count) before anything is loaded or written."""

    def names(text: str) -> tuple[str, ...]:
        return tuple(part.strip() for part in text.split(",") if part.strip())

    bits = _bit_widths(args.bits)
    settings = StudySettings(
        max_removed=args.max_removed, seed=args.seed, batch_size=args.batch_size, probe_windows=args.probe_windows,
        groups=names(args.groups), quantizer_bits={"rtn": bits, "gptq": bits}, pruners=names(args.pruner),
        mask_conventions=names(args.mask_conventions), views=names(args.views),
    )  # fmt: skip
    check_settings(settings)
    return settings


def _bit_widths(text: str) -> tuple[int, ...]:
    """``2-16`` or ``2,3,4,8`` as integer widths (PvqError for anything else)."""
    try:
        if "-" in text:
            low, high = (int(part) for part in text.split("-"))
            return tuple(range(low, high + 1))
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise PvqError(f"--bits takes a range such as 2-16 or a list such as 2,3,4,8, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    if args.study and args.mode == "sequential":
        raise PvqError("--study runs the whole model on --device (perplexity of every removal); drop --mode")
    if args.study:
        study_settings(args)
    place = placement(args, "full" if args.study else args.mode)
    loaded = load_placed(args.model, place)
    if args.study:
        return _study(args, loaded)
    return _remove(args, loaded, place)


def _calibration(args: argparse.Namespace, loaded: Any) -> tuple[list, Any]:
    """The calibration batches and their protocol."""

    return model_calibration(loaded, calibration_protocol(args, STUDY_CALIBRATION))


def _remove(args: argparse.Namespace, loaded: Any, place: Placement) -> int:
    import pandas as pd


    ordering = get_ordering(args.metric)
    arch = describe(loaded.model, args.tower)
    if args.tower != "language" and args.indices is None:
        raise PvqError("--tower vision removes the blocks --indices names; ranking vision blocks is not built")
    if args.indices is not None:
        parts = args.indices.split(",")
        for part in parts:
            if part in SHAPE_CHANGING_PARTS:
                remove_part(loaded.model, part)
        removal = remove_units(loaded.model, ordering.unit, [_index(part) for part in parts], args.tower)
    else:
        if args.blocks is None and args.experts is None:
            raise PvqError("say what to remove: --blocks N (by --metric), --indices I,J,... or --experts N")
        importance = measure_importance(loaded.model, _calibration(args, loaded)[0], arch, placement=place)
        if args.experts is not None:
            removal = drop_experts(loaded.model, importance.expert_scores, args.experts)
        else:
            table = unit_table(importance, arch)
            with pd.option_context("display.width", 160, "display.max_rows", 200):
                print(table[table["unit"] == ("block" if ordering.unit == "block" else ordering.unit)].to_string())
            unit, indices = choose_units(args.metric, importance, args.blocks, args.seed)
            removal = remove_units(loaded.model, unit, indices)
    fraction = removed_fraction(arch, removal)
    print(f"removed {removal.as_dict()}: {fraction:.2%} of the decoder parameters, "
          f"equal compression {removal_bits_per_weight(fraction):.3f} bits per weight")  # fmt: skip
    if args.out:
        print(f"saved -> {save_removed(loaded.model, args.out, removal, loaded.tokenizer)}")
    return 0


def _index(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise PvqError(f"--indices takes comma-separated block numbers such as 3,7,12, got {text!r}") from None


def _study(args: argparse.Namespace, loaded: Any) -> int:
    import json
    from dataclasses import asdict
    from pathlib import Path

    import pandas as pd
    import torch


    settings = study_settings(args)
    check_for_model(settings, loaded.model)
    batches, protocol = _calibration(args, loaded)
    windows = EvaluationProtocol(args.window, args.eval_windows).windows(loaded)
    provenance = collect(
        **loaded.describe(), calibration=protocol.as_dict(), evaluation=windows.protocol.as_dict(),
        settings=asdict(settings), torch_threads=torch.get_num_threads(),
    )  # fmt: skip
    out = Path(args.out or DEFAULT_STUDY_OUT)
    path = out / f"{STUDY_TABLE}.parquet"
    parts: dict[str, pd.DataFrame] = {}

    def write(name: str, table: pd.DataFrame) -> None:
        parts[name] = table
        write_table(stack_parts(parts), path, {**provenance, "parts": list(parts)})

    stored = None if loaded.stored_size is None else loaded.stored_size.bits_per_decoder_parameter
    study = run_study(loaded.model, batches, windows, settings, log=lambda text: print(text, flush=True),
                      on_table=write, stored_bits=stored)  # fmt: skip
    write_table(stacked_study(study, loaded.stored_size), path, {**provenance, "parts": [*study.tables, "base"]})
    write_text_atomic(out / "summary.json", json.dumps({**provenance, "summary": study.summary}, indent=2))
    with pd.option_context("display.width", 200, "display.max_rows", 400, "display.max_columns", 30):
        _print_summary(study)
    print(f"tables -> {out}")
    return 0


def _print_summary(study: Any) -> None:
    units = study.tables["units"]
    blocks = units[units["unit"] == "block"].sort_values("influence")
    print("Block Influence ranking (ShortGPT removes from the top):")
    print(blocks[["block", "influence", "removal_sqnr_db", "rank"]].to_string(index=False))
    angular = study.tables["angular"]
    chosen = angular[angular["chosen"]][["n", "start", "angular_distance"]]
    print("Angular distance rule l*(n):")
    print(chosen.to_string(index=False))
    levels = study.tables["levels"]
    if "perplexity" in levels:
        print(f"Perplexity by removed blocks (base {study.summary['base']['perplexity']:.3f}):")
        print(levels.pivot(index="removed", columns="ordering", values="perplexity").to_string())
    answer = study.tables["answer"]
    print("Removal against the methods at exactly equal size b(f), per view (dB = -10 log10 error; margins: "
          "removal minus method; equivalent bits of each method):")
    columns = ["view", "ordering", "removed", "mask_convention", "bits_per_decoder_parameter", "removal_db",
               "best_series", "best_db", "worst_series", "worst_db", "rd_db",
               *[c for c in answer.columns if c.startswith("equivalent_bits_")]]  # fmt: skip
    print(answer[[c for c in columns if c in answer]].to_string(index=False))
    for key, value in study.summary.items():
        if key.startswith("correlation"):
            print(f"{key}: {value}")
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in study.summary["seconds"].items()))
