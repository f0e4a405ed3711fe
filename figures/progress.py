"""What `pvq figures` shows while its experiments run: a line as each one starts, a bar over all of them, and
the running experiment's steps on the bar's line.

The start line gives the experiment's position among those the build needs and, when it ran before, an
estimate from the runtime recorded in its provenance sidecar (``runtime_s``, seconds):
``[5/9] removal_study — about 6 min``. On a terminal the bar redraws in place and each step replaces the
previous one on the bar's line; elsewhere (CI, SLURM logs) tqdm turns the bar off (``disable=None``) and
every start line and step is printed once, one line each.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import TracebackType
from typing import TextIO

from tqdm import tqdm

from measure.records.store import read_provenance

NO_ESTIMATE = "no earlier run to estimate from"


def duration_text(seconds: float) -> str:
    """A run time in seconds as a person says it: ``a few seconds``, ``about 40 s``, ``about 6 min``,
    ``about 1.5 h``."""
    if seconds < 10:
        return "a few seconds"
    if seconds < 55:
        return f"about {round(seconds, -1):.0f} s"
    if seconds < 3600:
        return f"about {max(1, round(seconds / 60))} min"
    return f"about {seconds / 3600:.1f} h"


def start_line(index: int, total: int, name: str, last_seconds: float | None) -> str:
    """``[index/total] name — about 6 min`` (the estimate from the last run's ``last_seconds``, if any)."""
    estimate = NO_ESTIMATE if last_seconds is None else duration_text(last_seconds)
    return f"[{index}/{total}] {name} — {estimate}"


def last_runtime(table: Path) -> float | None:
    """The runtime in seconds that the last run of a table recorded in its sidecar, or None without one."""
    try:
        seconds = read_provenance(table).get("runtime_s")
    except (OSError, json.JSONDecodeError):
        return None
    return float(seconds) if isinstance(seconds, int | float) else None


class ExperimentProgress:
    """A bar over ``total`` experiments on ``stream`` (default: stderr at creation), with start lines and the
    running experiment's steps. Use as a context manager, which closes the bar."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total = total
        self.bar = tqdm(total=total, desc="experiments", unit="exp", file=self.stream, disable=None)
        self.running = ""

    def start(self, index: int, name: str, last_seconds: float | None) -> None:
        """Print the start line of experiment ``index`` (1-based) and show its name on the bar."""
        self.running = name
        tqdm.write(start_line(index, self.total, name, last_seconds), file=self.stream)
        self.bar.set_postfix_str(name)

    def step(self, text: str) -> None:
        """A step of the running experiment: on the bar's line on a terminal, one printed line elsewhere."""
        if self.bar.disable:
            tqdm.write(f"  {self.running}: {text}", file=self.stream)
        else:
            self.bar.set_postfix_str(f"{self.running}: {text}")

    def advance(self) -> None:
        """Count one experiment done (run or found in the cache)."""
        self.bar.update(1)

    def __enter__(self) -> ExperimentProgress:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:  # fmt: skip
        self.bar.close()
