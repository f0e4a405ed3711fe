"""`pvq shrink`: structured width pruning that writes a smaller model any plain ``from_pretrained`` loads.

Examples::

    pvq shrink --model smollm2-135m --mlp 0.25 --heads 0.34 --out shrunk/      # 25 % channels, 1 of 3 KV groups
    pvq shrink --model smollm2-135m --mlp 0.5 --score wanda --no-refit --out w/  # Wanda-style, no refit
    pvq shrink --model smollm2-135m --heads 0.34 --head-unit query --out q/      # 1 query head per KV group
    pvq shrink --model some-vlm --tower vision --mlp 0.25 --score magnitude --no-refit --out v/  # vision MLPs

The channels and heads to remove are scored on the calibration text (same protocol options as ``pvq remove``);
the command prints the parameters removed and the per-unit output errors of the consumers, and writes ``--out``
atomically (``save_pretrained``, the tokenizer, ``pvq_shrink.json``); on any error nothing is written.
"""

from __future__ import annotations

import argparse

from measure.capture.placement import load_placed
from measure.compress.shrink.shrink import ShrinkSettings, check_settings, save_shrunk, shrink_counts, shrink_model
from measure.evaluation.protocols import STUDY_CALIBRATION, model_calibration
from measure.models.architecture import TOWERS
from measure.models.defaults import DEFAULT_MODEL
from pvq.commands.common import add_calibration_arguments, add_device_arguments, calibration_protocol, placement
from theory.accounting import removal_bits_per_weight
from theory.errors import PvqError

HELP = "Structured width pruning: remove MLP channels and attention heads, save the smaller model."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"name, folder or .gguf (default {DEFAULT_MODEL})")
    parser.add_argument(
        "--mlp", type=mlp_fractions, default=0.0,
        help="fraction of each MLP's channels removed, in [0, 1); or one fraction per block, comma-separated "
        "(per-block widths: saved only where the family's config holds per-block widths)",
    )  # fmt: skip
    parser.add_argument(
        "--heads", type=float, default=0.0,
        help="fraction removed, in [0, 1): of the KV groups (with their query heads), or with --head-unit query "
        "of the query heads inside every KV group",
    )  # fmt: skip
    parser.add_argument("--head-unit", choices=("kv", "query"), default="kv", help="what --heads counts (kv)")
    parser.add_argument("--score", default="output", help="output (default), wanda or magnitude")
    parser.add_argument("--no-refit", action="store_true", help="keep the consumers' kept columns unchanged")
    parser.add_argument(
        "--tower", choices=TOWERS, default="language",
        help="shrink the language decoder (default) or a VLM's vision encoder (with --score magnitude --no-refit)",
    )  # fmt: skip
    parser.add_argument("--out", required=True, help="folder for the shrunk model (written atomically)")
    add_calibration_arguments(parser, STUDY_CALIBRATION)
    add_device_arguments(parser)


def mlp_fractions(text: str) -> float | tuple[float, ...]:
    """``--mlp``: one fraction, or a comma-separated fraction per block."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a fraction or comma-separated fractions, got {text!r}") from None
    return values[0] if len(values) == 1 else values


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    settings = ShrinkSettings(mlp=args.mlp, heads=args.heads, score=args.score, refit=not args.no_refit,
                              head_unit=args.head_unit, tower=args.tower)  # fmt: skip
    check_settings(settings)
    if not any(settings.mlp if isinstance(settings.mlp, tuple) else (settings.mlp,)) and settings.heads == 0:
        raise PvqError("nothing to remove: give --mlp F and/or --heads F with F in (0, 1)")
    place = placement(args, "full")
    loaded = load_placed(args.model, place)
    shrink_counts(loaded.model, settings)  # what this model cannot take fails before calibration
    batches, _ = model_calibration(loaded, calibration_protocol(args, STUDY_CALIBRATION))
    result = shrink_model(loaded.model, batches, settings)
    fraction = result.removed_fraction
    units = result.units.assign(relative_refit_error=lambda t: t.refit_error / t.signal,
                                relative_unrefit_error=lambda t: t.unrefit_error / t.signal)  # fmt: skip
    with pd.option_context("display.width", 160, "display.max_rows", 80):
        print(units.drop(columns=["refit_error", "unrefit_error", "signal"]).to_string(index=False))
    bits = removal_bits_per_weight(fraction)
    print(f"config: {result.config_changes}; removed {result.removed_parameters} parameters, {fraction:.2%} of "
          f"the {result.decoder_parameters} decoder parameters: {bits:.3f} bits per decoder parameter")
    print(f"saved -> {save_shrunk(result, args.out, loaded.tokenizer)}")
    return 0
