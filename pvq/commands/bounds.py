"""`pvq bounds`: exact optima and certified bounds of the per-layer quantization and pruning problems."""

from __future__ import annotations

import argparse
import json

from measure.bounds import bounds_for_model
from measure.capture.placement import load_placed
from measure.evaluation.protocols import BOUNDS_CALIBRATION
from pvq.commands.common import add_calibration_arguments, add_device_arguments, add_mode_argument, placement

HELP = "Exact optima and bounds of the per-layer quantization and pruning problems."
COLUMNS = ("family", "method", "kind", "sqnr_db", "sqnr_upper_db", "status", "optimal_chunks", "chunks", "gap",
           "seconds")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m", help="default model name, local folder or .gguf file")
    parser.add_argument("--layer", required=True, help="linear layer name, e.g. model.layers.0.self_attn.q_proj")
    parser.add_argument("--bits", type=int, default=4, help="bits b; pruning keeps k = n·b/16 (default 4)")
    parser.add_argument("--opt-dim", type=int, default=32, help="chunk size n in input channels (default 32)")
    parser.add_argument("--rows", type=int, default=16, help="seeded random output rows solved (default 16)")
    parser.add_argument("--max-chunks", type=int, default=None, help="first chunks of each row (default: all)")
    parser.add_argument("--time-limit", type=float, default=10.0, help="seconds per exact solve (default 10)")
    parser.add_argument("--no-sdp", action="store_true", help="skip the SDP lower bounds")
    add_calibration_arguments(parser, BOUNDS_CALIBRATION, batch_size=False)
    parser.add_argument("--seed", type=int, default=0, help="seed of the row subset and SDP rounding")
    parser.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    add_device_arguments(parser)
    add_mode_argument(parser)


def run(args: argparse.Namespace) -> int:
    place = placement(args, args.mode)
    loaded = load_placed(args.model, place)
    frame = bounds_for_model(
        loaded, [args.layer], [args.bits], opt_dim=args.opt_dim, rows=args.rows, max_chunks=args.max_chunks,
        sdp_bits=[] if args.no_sdp else None, sequences=args.sequences, sequence_length=args.seq_len,
        time_limit=args.time_limit, seed=args.seed, placement=place,
    )
    shown = frame[list(COLUMNS)]
    if args.json:
        print(json.dumps({"model": loaded.model_id, "layer": args.layer, "bits": args.bits,
                          "results": json.loads(shown.to_json(orient="records"))}, indent=2))  # fmt: skip
        return 0
    print(f"{loaded.model_id} {args.layer}, b = {args.bits}: output SQNR (dB) over {int(shown['chunks'].iloc[0])} "
          f"chunks of {args.opt_dim} weights (each chunk compressed alone, rest of its row unchanged)")
    print(shown.to_string(index=False, float_format=lambda value: f"{value:.3f}"))
    return 0
