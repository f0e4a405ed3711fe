"""Arguments every model-touching command shares: ``--device cpu|cuda|auto`` and ``--dtype``.

Cheap to import (torch is imported inside the resolvers), so subcommand modules can use it at import time.
"""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING

from theory.errors import PvqError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")
DEFAULT_DEVICE = "auto"
DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_DTYPE = "float32"
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--device`` (default auto) and ``--dtype`` (default float32) to ``parser``."""
    parser.add_argument(
        "--device", default=DEFAULT_DEVICE, metavar="{auto,cpu,cuda,cuda:N}",
        help="where blocks run: auto = cuda when available, else cpu (default auto)",
    )
    parser.add_argument(
        "--dtype", default=DEFAULT_DTYPE, choices=DTYPES,
        help=f"weight and activation precision (default {DEFAULT_DTYPE}; float16/bfloat16 halve memory on GPUs)",
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
