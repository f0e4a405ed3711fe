"""`pvq info`: describe a model's architecture, parameter counts, stored size and grid detection."""

from __future__ import annotations

import argparse
import json

from measure.capture.placement import load_placed
from measure.models.architecture import TOWERS, describe, parameter_counts, summary_table, unquantized_parameters
from measure.models.weight_grid import detect_linear_grid
from pvq.commands.common import add_device_arguments, placement

HELP = "Describe a model: blocks and their kinds, sublayers, linear layers, parameter counts, grid detection."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="default model name, local folder, .gguf file or hub id")
    parser.add_argument("--linears", action="store_true", help="list every linear layer")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--tower", choices=TOWERS, default="language", help="language decoder or vision encoder")
    add_device_arguments(parser)


def run(args: argparse.Namespace) -> int:
    place = placement(args, capture_mode="full")
    loaded = load_placed(args.model, place)
    arch = describe(loaded.model, args.tower)
    counts = parameter_counts(arch)
    table = summary_table(arch)
    grid = detect_linear_grid(loaded.model)
    first = arch.blocks[0]
    summary = {
        "model": loaded.model_id,
        "model_hash": loaded.model_hash,
        "stored_size": None if loaded.stored_size is None else loaded.stored_size.as_dict(),
        "device": place.device,
        "dtype": place.dtype_name,
        "class": arch.model_class,
        "family": arch.family,
        "blocks": len(arch.blocks),
        "block_kinds": ["+".join(block.kinds) for block in arch.blocks],
        "parallel_blocks": first.parallel,
        "sublayers": {sublayer.operator: sublayer.name for sublayer in first.sublayers},
        "linear_layers": len(table),
        "linears_per_block": [f"{r.role} ({r.out_features}x{r.in_features})" for r in first.linears],
        "parameters": {k: v for k, v in counts.items() if not k.startswith("block.")},
        "unquantized_16_bit_parameters": unquantized_parameters(arch),
        "tied_embeddings": arch.tied_embeddings,
        "bos_per_window": loaded.bos_per_window,
        "grid_detection": grid.as_dict(),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    for key, value in summary.items():
        print(f"{key:>18}: {value}")
    if args.linears:
        print(table.to_string(index=False))
    return 0
