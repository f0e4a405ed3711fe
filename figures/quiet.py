"""Third-party chatter kept off the terminal while pvq's experiments run (everything shows with ``--verbose``).

While :func:`third_party_silenced` is active:

* ``sys.stderr`` is a :class:`PvqOnlyStream`. A write is kept when the code that asked for it belongs to
  pvq (:data:`PVQ_PACKAGES`): the first frame above the write that is not output machinery (tqdm, logging,
  warnings, io, ...). Everything else is dropped: lm-eval's and transformers' progress bars, Python
  warnings raised in third-party code (cvxpy's "Solution may be inaccurate", transformers' FutureWarnings),
  third-party log records printed by logging's last-resort handler or by a handler created meanwhile.
  pvq's own warnings, log records, prints and bars pass.
* The loggers of :data:`THIRD_PARTY_LOGGERS` are set to ERROR, for handlers that hold the real stderr from
  before (transformers' own handler; lm-eval's, if it was set up): e.g. lm-eval's "`pretrained` model kwarg
  is not of type `str`" warning.

Objects that kept the stand-in stream (a handler created while silenced) write through it unchanged later.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from types import FrameType
from typing import Any, TextIO

PVQ_PACKAGES = ("theory", "measure", "figures")
OUTPUT_MACHINERY = ("tqdm", "logging", "warnings", "_py_warnings", "io", "codecs", "contextlib", "threading")
THIRD_PARTY_LOGGERS = (
    "lm_eval", "transformers", "datasets", "huggingface_hub", "accelerate", "torch", "cvxpy", "__cvxpy__",
    "urllib3", "filelock", "fsspec",
)


def writing_package(frame: FrameType | None) -> str | None:
    """The top-level package of the code that asked for a write: that of the first frame from ``frame``
    outwards whose module is not :data:`OUTPUT_MACHINERY`; None when there is none."""
    while frame is not None:
        package = str(frame.f_globals.get("__name__", "")).partition(".")[0]
        if package not in OUTPUT_MACHINERY:
            return package
        frame = frame.f_back
    return None


class PvqOnlyStream:
    """Stands in for ``sys.stderr``: while ``silencing``, keeps only the writes pvq's code asks for; once the
    silenced block ends, writes everything through. Other attributes (``isatty``, ``fileno``, ``encoding``)
    are the wrapped stream's, and it equals the wrapped stream, so tqdm still clears a bar drawn on the real
    stderr before a line is written to stdout (``tqdm.write``)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.silencing = True

    def _kept(self, frame: FrameType | None) -> bool:
        return not self.silencing or writing_package(frame) in PVQ_PACKAGES

    def write(self, text: str) -> int:
        """Write ``text`` when kept; report it written either way."""
        return self.stream.write(text) if self._kept(sys._getframe(1)) else len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        """Write each line when kept."""
        if self._kept(sys._getframe(1)):
            self.stream.writelines(lines)

    def flush(self) -> None:
        """Flush the wrapped stream."""
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)

    def __eq__(self, other: object) -> bool:
        return other is self or other == self.stream

    def __hash__(self) -> int:
        return hash(self.stream)


@contextlib.contextmanager
def third_party_silenced() -> Iterator[None]:
    """Drop third-party output (see the module docstring) inside the block; restore everything after it."""
    stand_in = PvqOnlyStream(sys.stderr)
    loggers = [logging.getLogger(name) for name in THIRD_PARTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(stand_in):  # type: ignore[type-var]
            yield
    finally:
        stand_in.silencing = False
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def quiet_unless(verbose: bool) -> AbstractContextManager[None]:
    """:func:`third_party_silenced`, or nothing at all when ``verbose``."""
    return contextlib.nullcontext() if verbose else third_party_silenced()
