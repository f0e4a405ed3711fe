"""Arguments every model-touching command shares: ``--device cpu|cuda|auto`` and ``--dtype``, and where a
command's model lives and its calibration pass runs (:class:`Placement`).

On an accelerator a calibration pass is layer-sequential by default: the model stays in CPU memory and one
decoder block at a time visits the device (:func:`measure.capture.statistics.capture`, ``mode="sequential"``), so a
model larger than the device's memory still runs; the pass reports its peak memory per block.

Cheap to import (torch is imported inside the resolvers), so subcommand modules can use it at import time.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from theory.errors import PvqError

if TYPE_CHECKING:
    import torch

    from measure.capture.statistics import BlockHooks
    from measure.models.load import LoadedModel

DEVICES = ("auto", "cpu", "cuda")
DEFAULT_DEVICE = "auto"
DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_DTYPE = "float32"
CAPTURE_MODES = ("full", "sequential")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


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


def check_device_name(name: str) -> str:
    """``name`` if it is auto, cpu, cuda or cuda:N, else a PvqError listing those."""
    if not isinstance(name, str) or not _DEVICE.match(name):
        raise PvqError(f"unknown device {name!r}; use one of auto, cpu, cuda or cuda:N")
    return name


def resolve_device(name: str) -> str:
    """The torch device to use: ``auto`` = ``cuda`` when CUDA is available, else ``cpu``.

    Asking for ``cuda`` (or ``cuda:N``) on a machine without it is a PvqError, never a silent CPU run.
    """
    import torch

    check_device_name(name)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PvqError(f"--device {name} asked for, but torch sees no CUDA device; use --device cpu or auto")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise PvqError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return name


def resolve_dtype(name: str) -> torch.dtype:
    """The ``torch.dtype`` called ``name`` (one of :data:`DTYPES`)."""
    import torch

    if name not in DTYPES:
        raise PvqError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def device_map_for(device: str) -> str | None:
    """``"auto"`` (accelerate spreads the blocks over the GPUs) for plain ``cuda`` with more than one CUDA device
    visible; None otherwise (one device, or ``cuda:N``, which asks for that device alone)."""
    import torch

    return "auto" if device == "cuda" and torch.cuda.device_count() > 1 else None


@dataclass(frozen=True)
class Placement:
    """Where a command's model lives and its calibration pass runs: resolved ``--device``, ``--dtype``, mode."""

    device: str
    dtype_name: str = DEFAULT_DTYPE
    mode: str = "full"

    @property
    def dtype(self) -> torch.dtype:
        return resolve_dtype(self.dtype_name)

    @property
    def home(self) -> str:
        """Where the model is loaded: CPU memory for a layer-sequential pass (blocks visit ``device`` one at a
        time), else ``device``."""
        return "cpu" if self.mode == "sequential" else self.device

    def as_dict(self) -> dict[str, str]:
        """Provenance fields."""
        return {"device": self.device, "dtype": self.dtype_name, "capture_mode": self.mode}


def placement(args: argparse.Namespace, mode: str | None = None) -> Placement:
    """Resolve ``args.device`` and ``args.dtype`` (a missing CUDA device is a PvqError before any work) and the
    capture mode: ``mode`` when given, else sequential exactly when the device is not the CPU."""
    device = resolve_device(args.device)
    resolve_dtype(args.dtype)
    if mode is not None and mode not in CAPTURE_MODES:
        raise PvqError(f"unknown capture mode {mode!r}; choose one of {', '.join(CAPTURE_MODES)}")
    return Placement(device, args.dtype, mode or ("full" if device == "cpu" else "sequential"))


def load_placed(name: str, place: Placement) -> LoadedModel:
    """:func:`measure.models.load.load_model` of ``name`` at ``place.home`` in ``place.dtype``."""
    from measure.models.load import load_model

    return load_model(name, device=place.home, dtype=place.dtype)


@contextmanager
def block_memory(place: Placement, report: TextIO | None = None) -> Iterator[BlockHooks | None]:
    """The ``block_hooks`` that log the peak memory of each block of a layer-sequential pass run inside the
    context (None for a full pass); when the pass ends, one line ``peak memory per block ...`` goes to
    ``report`` (default stderr): peak RSS on the CPU, ``torch.cuda.max_memory_allocated`` on CUDA
    (:class:`measure.capture.memory.BlockMemoryLog`)."""
    if place.mode != "sequential":
        yield None
        return
    from measure.capture.memory import BlockMemoryLog

    memory = BlockMemoryLog(place.device)
    yield memory.hooks
    memory.finish()
    print(memory.summary(), file=report or sys.stderr, flush=True)
