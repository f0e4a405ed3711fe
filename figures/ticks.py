"""Tick labels that do not collide on narrow log axes.

Matplotlib labels the minor ticks of a log axis that spans at most one decade at 2, 3, 4 and 6 × 10^k
(``LogFormatter.minor_thresholds``); on a half-width panel those labels run into each other.
:class:`SparseLogMinorFormatter` labels the minor ticks only at 2 and 5 × 10^k, and only while the axis spans
less than one decade (a wider axis is read from its decades, as matplotlib does).
"""

from __future__ import annotations

import math

from matplotlib.axis import Axis
from matplotlib.ticker import Formatter, NullLocator

LABELLED_MANTISSAS = (2, 5)


class SparseLogMinorFormatter(Formatter):
    """Minor tick labels of a log axis at 2 and 5 × 10^k only, in matplotlib's ``a×10^b`` mathtext."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        low, high = sorted(self.axis.get_view_interval()) if self.axis is not None else (0.0, 0.0)
        if x <= 0 or low <= 0 or math.log10(high / low) >= 1:
            return ""
        exponent = math.floor(math.log10(x) + 1e-9)
        mantissa = x / 10**exponent
        if not any(math.isclose(mantissa, shown, rel_tol=1e-6) for shown in LABELLED_MANTISSAS):
            return ""
        return f"$\\mathdefault{{{round(mantissa)}\\times10^{{{exponent}}}}}$"


def sparse_log_minor_labels(axis: Axis) -> None:
    """Give a log ``axis`` the :class:`SparseLogMinorFormatter` (call after ``set_xscale("log")``)."""
    if not isinstance(axis.get_minor_locator(), NullLocator):
        axis.set_minor_formatter(SparseLogMinorFormatter())
