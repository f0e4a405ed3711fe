"""Where a model lives and its capture pass runs: device and dtype names resolved, and :class:`Placement`.

On an accelerator a capture pass is layer-sequential by default (capture mode ``"sequential"``): the model stays
in CPU memory and one decoder block at a time visits the device (:func:`measure.capture.statistics.capture`), so
a model larger than the device's memory still runs; the pass reports its peak memory per block
(:func:`capture_placed`). The capture mode says where the blocks run, not which stream a compression is
calibrated on (:data:`measure.compress.spec.CALIBRATION_STREAMS`): both modes capture the same Grams.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TextIO

import torch

from measure.capture.memory import BlockMemoryLog
from measure.capture.statistics import CAPTURE_MODES, BlockHooks, Capture, capture
from measure.models.architecture import Architecture, Block
from measure.models.load import LoadedModel, load_model
from theory.errors import PvqError, choose

DEVICES = ("auto", "cpu", "cuda")
DEFAULT_DEVICE = "auto"
DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_DTYPE = "float32"
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device_name(name: str) -> str:
    """``name`` if it is auto, cpu, cuda or cuda:N, else a PvqError listing those."""
    if not isinstance(name, str) or not _DEVICE.match(name):
        raise PvqError(f"unknown device {name!r}; use one of auto, cpu, cuda or cuda:N")
    return name


def resolve_device(name: str) -> str:
    """The torch device to use: ``auto`` = ``cuda`` when CUDA is available, else ``cpu``.

    Asking for ``cuda`` (or ``cuda:N``) on a machine without it is a PvqError, never a silent CPU run.
    """
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
    choose("dtype", name, DTYPES)
    return getattr(torch, name)


def device_map_for(device: str) -> str | None:
    """``"auto"`` (accelerate spreads the blocks over the GPUs) for plain ``cuda`` with more than one CUDA device
    visible; None otherwise (one device, or ``cuda:N``, which asks for that device alone)."""
    return "auto" if device == "cuda" and torch.cuda.device_count() > 1 else None


@dataclass(frozen=True)
class Placement:
    """Where a command's model lives and its capture pass runs: resolved ``--device``, ``--dtype`` and the capture
    mode (``--mode``: ``full``, the whole model on ``device``; ``sequential``, one block at a time there)."""

    device: str
    dtype_name: str = DEFAULT_DTYPE
    capture_mode: str = "full"

    @property
    def dtype(self) -> torch.dtype:
        return resolve_dtype(self.dtype_name)

    @property
    def home(self) -> str:
        """Where the model is loaded: CPU memory for a layer-sequential pass (blocks visit ``device`` one at a
        time), else ``device``."""
        return "cpu" if self.capture_mode == "sequential" else self.device

    def as_dict(self) -> dict[str, str]:
        """Provenance fields."""
        return {"device": self.device, "dtype": self.dtype_name, "capture_mode": self.capture_mode}


ON_CPU = Placement("cpu")
"""The library's default placement: the model on the CPU, one whole-model capture pass per batch."""


def resolve_placement(device: str, dtype: str = DEFAULT_DTYPE, capture_mode: str | None = None) -> Placement:
    """Resolve ``device`` and ``dtype`` (a missing CUDA device is a PvqError before any work) and the capture
    mode: ``capture_mode`` when given, else sequential exactly when the device is not the CPU."""
    resolved = resolve_device(device)
    resolve_dtype(dtype)
    if capture_mode is not None:
        choose("capture mode", capture_mode, CAPTURE_MODES)
    return Placement(resolved, dtype, capture_mode or ("full" if resolved == "cpu" else "sequential"))


def load_placed(name: str, place: Placement) -> LoadedModel:
    """:func:`measure.models.load.load_model` of ``name`` at ``place.home`` in ``place.dtype``."""
    return load_model(name, device=place.home, dtype=place.dtype)


@contextmanager
def block_memory(place: Placement, report: TextIO | None = None) -> Iterator[BlockHooks | None]:
    """The ``block_hooks`` that log the peak memory of each block of a layer-sequential pass run inside the
    context (None for a full pass); when the pass ends, one line ``peak memory per block ...`` goes to
    ``report`` (default stderr): peak RSS on the CPU, ``torch.cuda.max_memory_allocated`` on CUDA
    (:class:`measure.capture.memory.BlockMemoryLog`)."""
    if place.capture_mode != "sequential":
        yield None
        return
    memory = BlockMemoryLog(place.device)
    yield memory.hooks
    memory.finish()
    print(memory.summary(), file=report or sys.stderr, flush=True)


def capture_placed(
    model: torch.nn.Module,
    batches: Sequence[torch.Tensor],
    place: Placement = ON_CPU,
    arch: Architecture | None = None,
    keep_rows: int = 0,
    block_hooks: BlockHooks | None = None,
) -> Capture:
    """:func:`measure.capture.statistics.capture` run as ``place`` says (its capture mode, blocks on its device),
    with ``block_hooks`` and, for a sequential pass, the per-block memory log of :func:`block_memory`."""
    with block_memory(place) as memory_hooks:
        hooks = [hook for hook in (memory_hooks, block_hooks) if hook is not None]

        def all_hooks(block: Block) -> list[torch.utils.hooks.RemovableHandle]:
            return [handle for hook in hooks for handle in hook(block)]

        return capture(model, batches, mode=place.capture_mode, keep_rows=keep_rows, device=place.device,
                       arch=arch, block_hooks=all_hooks if hooks else None)  # fmt: skip
