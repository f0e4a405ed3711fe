"""Arguments every model-touching command shares: ``--device cpu|cuda|auto``, ``--dtype`` and ``--mode``.

What they resolve to (:class:`measure.capture.placement.Placement`) is library code; this module only declares
the arguments.
"""

from __future__ import annotations

import argparse
import dataclasses

from measure.capture.placement import DEFAULT_DEVICE, DEFAULT_DTYPE, DTYPES, Placement, resolve_placement
from measure.capture.statistics import CAPTURE_MODES
from measure.data.calibration import CalibrationProtocol


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


def add_calibration_arguments(parser: argparse.ArgumentParser, default: CalibrationProtocol,
                              batch_size: bool = True) -> None:  # fmt: skip
    """``--sequences``, ``--seq-len`` (and ``--batch-size``) of a :class:`CalibrationProtocol`, defaulting to
    ``default``'s (read back by :func:`calibration_protocol`)."""
    parser.add_argument("--sequences", type=int, default=default.sequences,
                        help=f"calibration windows (default {default.sequences})")  # fmt: skip
    parser.add_argument("--seq-len", type=int, default=default.sequence_length,
                        help=f"tokens per calibration window (default {default.sequence_length})")  # fmt: skip
    if batch_size:
        parser.add_argument("--batch-size", type=int, default=default.batch_size,
                            help=f"windows per forward pass (default {default.batch_size})")  # fmt: skip


def calibration_protocol(args: argparse.Namespace, default: CalibrationProtocol) -> CalibrationProtocol:
    """The calibration protocol the arguments of :func:`add_calibration_arguments` ask for (the model's BOS policy
    is applied where the windows are cut, :func:`measure.evaluation.protocols.model_calibration`)."""
    return dataclasses.replace(default, sequences=args.sequences, sequence_length=args.seq_len,
                               batch_size=getattr(args, "batch_size", default.batch_size))  # fmt: skip
