"""Arguments every model-touching command shares: ``--device cpu|cuda|auto``, ``--dtype`` and ``--mode``.

What they resolve to (:class:`measure.capture.placement.Placement`) is library code; this module only declares
the arguments.
"""

from __future__ import annotations

import argparse

from measure.capture.placement import DEFAULT_DEVICE, DEFAULT_DTYPE, DTYPES, Placement, resolve_placement
from measure.capture.statistics import CAPTURE_MODES


def add_device_arguments(parser: argparse.ArgumentParser, overrides: str | None = None) -> None:
    """Add ``--device`` (default auto) and ``--dtype`` (default float32) to ``parser``.

    With ``overrides`` (what else sets them, e.g. ``"the experiment file"``) both default to None: as it says.
    """
    device, dtype = (None, None) if overrides else (DEFAULT_DEVICE, DEFAULT_DTYPE)
    parser.add_argument(
        "--device", default=device, metavar="{auto,cpu,cuda,cuda:N}",
        help="where blocks run: auto = cuda when available, else cpu "
        f"(default: {'as ' + overrides + ' says' if overrides else DEFAULT_DEVICE})",
    )
    parser.add_argument(
        "--dtype", default=dtype, choices=DTYPES,
        help="weight and activation precision; float16/bfloat16 halve memory on GPUs "
        f"(default: {'as ' + overrides + ' says' if overrides else DEFAULT_DTYPE})",
    )


def add_mode_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--mode full|sequential`` (default: sequential on an accelerator, full on the CPU)."""
    parser.add_argument(
        "--mode", choices=CAPTURE_MODES, default=None,
        help="calibration pass (same Grams either way): full = the whole model on --device, one forward per "
        "batch; sequential = the model in CPU memory, one decoder block at a time on --device "
        "(default: sequential on an accelerator, full on the CPU)",
    )


def placement(args: argparse.Namespace, capture_mode: str | None = None) -> Placement:
    """:func:`measure.capture.placement.resolve_placement` of ``args.device``, ``args.dtype`` and
    ``capture_mode`` (``--mode``, or what the command fixes)."""
    return resolve_placement(args.device, args.dtype, capture_mode)
