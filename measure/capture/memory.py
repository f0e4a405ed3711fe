"""Peak memory: resident set size of this process on the CPU, allocated bytes on CUDA, per block.

On Linux the kernel keeps the resident high-water mark ``VmHWM`` of a process; writing ``5`` to
``/proc/self/clear_refs`` resets it to the current RSS (proc(5), since Linux 4.0), so the peak of any
stretch of work (one decoder block) is ``VmHWM`` read at its end. Elsewhere the peak is
``ru_maxrss``, which cannot be reset (a stretch then shows a peak only when it exceeds every earlier one).
On CUDA the peak is ``torch.cuda.max_memory_allocated`` after ``torch.cuda.reset_peak_memory_stats``.
"""

from __future__ import annotations

import logging
import resource
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")
RESET_PEAK_RSS = "5"
KIB = 1024
GIB = KIB**3
RU_MAXRSS_UNIT = 1 if sys.platform == "darwin" else KIB
"""``ru_maxrss`` is in bytes on macOS and in KiB on Linux (getrusage(2))."""

log = logging.getLogger(__name__)


def _status_kib(field: str) -> int | None:
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    """Current resident set size of this process in bytes (``VmRSS``; falls back to the peak)."""
    kib = _status_kib("VmRSS")
    return kib * KIB if kib is not None else peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Resident high-water mark of this process in bytes since start or the last :func:`reset_peak_rss`."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * KIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RU_MAXRSS_UNIT


def reset_peak_rss() -> bool:
    """Reset the resident high-water mark to the current RSS; False where the OS does not allow it."""
    try:
        PROC_CLEAR_REFS.write_text(RESET_PEAK_RSS)
    except OSError:
        return False
    return True


def is_cuda(device: str) -> bool:
    """True for ``cuda`` and ``cuda:N`` device names."""
    return str(device).startswith("cuda")


@dataclass
class MemoryReading:
    """Peak memory of one stretch of work: ``peak_bytes`` absolute, ``delta_bytes`` above its start."""

    device: str
    start_bytes: int = 0
    peak_bytes: int = 0

    @property
    def delta_bytes(self) -> int:
        """Peak minus the memory in use when the stretch began."""
        return max(self.peak_bytes - self.start_bytes, 0)

    def as_dict(self) -> dict[str, Any]:
        """Fields for logs and provenance."""
        return {"device": self.device, "peak_bytes": self.peak_bytes, "delta_bytes": self.delta_bytes}


def _cuda_allocated(device: str, peak: bool) -> int:
    import torch

    return int(torch.cuda.max_memory_allocated(device) if peak else torch.cuda.memory_allocated(device))


def start_reading(device: str) -> MemoryReading:
    """Reset the peak counter of ``device`` (CUDA allocator, or process RSS) and note the current use."""
    if is_cuda(device):
        import torch

        torch.cuda.reset_peak_memory_stats(device)
        start = _cuda_allocated(device, peak=False)
    else:
        reset_peak_rss()
        start = rss_bytes()
    return MemoryReading(device, start, start)


def update_reading(reading: MemoryReading) -> MemoryReading:
    """Raise ``reading.peak_bytes`` to the peak seen since :func:`start_reading`."""
    current = _cuda_allocated(reading.device, peak=True) if is_cuda(reading.device) else peak_rss_bytes()
    reading.peak_bytes = max(reading.peak_bytes, current)
    return reading


@contextmanager
def track_peak(device: str = "cpu") -> Iterator[MemoryReading]:
    """Context manager: the yielded reading holds the peak memory of the block when it exits."""
    reading = start_reading(device)
    try:
        yield reading
    finally:
        update_reading(reading)


def format_bytes(count: float) -> str:
    """Bytes in binary units, e.g. ``1.50 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < KIB or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.2f} {unit}"
        count /= KIB
    return f"{count:.2f} TiB"


class BlockMemoryLog:
    """Peak memory of each decoder block during a layer-sequential pass, logged as each block finishes.

    Pass :meth:`hooks` as ``block_hooks`` to :func:`measure.capture.statistics.capture` (mode ``"sequential"``):
    the
    first forward call of block i starts its reading, every call raises its peak, and the next block's start
    logs it. ``peaks`` maps block index -> :class:`MemoryReading`; :meth:`finish` logs the last block.
    In the whole-model mode blocks interleave per batch, so per-block peaks are not meaningful there.
    """

    def __init__(self, device: str = "cpu", logger: logging.Logger = log) -> None:
        self.device = device
        self.logger = logger
        self.peaks: dict[int, MemoryReading] = {}
        self._current: int | None = None

    def hooks(self, block: Any) -> list[Any]:
        """Forward pre- and post-hooks on ``block.module`` (a :class:`measure.models.architecture.Block`)."""
        index = block.index

        def before(module: Any, args: Any) -> None:
            if self._current != index:
                self.finish()
                self._current = index
                self.peaks[index] = start_reading(self.device)

        def after(module: Any, args: Any, output: Any) -> None:
            update_reading(self.peaks[index])

        return [block.module.register_forward_pre_hook(before), block.module.register_forward_hook(after)]

    def finish(self) -> None:
        """Log the block in progress (called automatically when the next block starts)."""
        if self._current is None:
            return
        reading = self.peaks[self._current]
        self.logger.info(
            "block %d: peak %s on %s (%s above its start)", self._current, format_bytes(reading.peak_bytes),
            self.device, format_bytes(reading.delta_bytes),
        )
        self._current = None

    def summary(self) -> str:
        """One line: the highest per-block peak (and its block) and the largest rise above a block's start."""
        where = f"{'CUDA allocator' if is_cuda(self.device) else 'process RSS'} on {self.device}"
        if not self.peaks:
            return f"peak memory per block ({where}): no block ran"
        index, top = max(self.peaks.items(), key=lambda item: item[1].peak_bytes)
        rise = max(reading.delta_bytes for reading in self.peaks.values())
        return (
            f"peak memory per block ({where}, {len(self.peaks)} blocks): {format_bytes(top.peak_bytes)} "
            f"(block {index}); at most {format_bytes(rise)} above a block's start"
        )
