"""Does every text of a figure sit inside the figure without touching another text?

After a draw with the Agg renderer, each text artist has a window extent (its bounding box in pixels, from the
renderer's font metrics). :func:`text_problems` collects the texts a reader sees: tick labels drawn inside the
axis' view interval, axis labels, titles (left, centre, right: panel letters included), free texts and
annotations, the figure's super-labels, and legends (each as one box, its texts inside it). It reports every
pair whose boxes overlap by more than ``tolerance_px`` in both directions and every box that leaves the figure
by more than ``tolerance_px``. A legend is allowed to contain its own texts.

:func:`legend_problems` checks legends against the data: every plotted point (a line's vertices, a scatter's
offsets, an error bar's ends, a bar's box) drawn inside its axes, in display coordinates, must lie outside every
legend box shrunk by ``tolerance_px``. Filled areas (contour maps, images) are the background, not data points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.patches import Rectangle
from matplotlib.text import Text
from matplotlib.transforms import Bbox

TOLERANCE_PX = 0.5


@dataclass(frozen=True)
class Placed:
    """A visible text (or legend) and its window extent in pixels."""

    label: str
    box: Bbox
    artist: Artist
    owner: Artist | None = None  # the legend a text belongs to


def _shown(artist: Artist) -> bool:
    """Visible, and (for a text) not empty."""
    if not artist.get_visible():
        return False
    return not isinstance(artist, Text) or bool(artist.get_text().strip())


def _tick_texts(axis: Axis) -> list[Text]:
    """The tick labels the axis draws: visible, non-empty and at a tick inside the view interval."""
    low, high = sorted(axis.get_view_interval())
    span = (high - low) or 1.0
    texts = []
    for ticks in (axis.get_major_ticks(), axis.get_minor_ticks()):
        for tick in ticks:
            location = tick.get_loc()
            if location is None or not low - 1e-9 * span <= location <= high + 1e-9 * span:
                continue
            texts.extend(label for label in (tick.label1, tick.label2) if _shown(label))
    return texts


def _describe(text: Text, where: str) -> str:
    return f"{where} {text.get_text()!r}"


def placed_texts(figure: Figure) -> list[Placed]:
    """Every text a reader sees in ``figure`` (drawn with Agg first), with its window extent."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    placed: list[Placed] = []

    def add(text: Text, where: str, owner: Artist | None = None) -> None:
        if _shown(text):
            placed.append(Placed(_describe(text, where), text.get_window_extent(renderer), text, owner))

    def add_legend(legend: Legend | None, where: str) -> None:
        if legend is None or not legend.get_visible():
            return
        placed.append(Placed(f"{where} legend", legend.get_window_extent(renderer), legend))
        for text in [*legend.get_texts(), legend.get_title()]:
            add(text, f"{where} legend text", owner=legend)

    for index, ax in enumerate(figure.axes):
        if not ax.get_visible():
            continue
        where = f"axes {index}"
        for axis, name in ((ax.xaxis, "x"), (ax.yaxis, "y")):
            if axis.get_visible():
                for text in _tick_texts(axis):
                    add(text, f"{where} {name} tick")
                add(axis.label, f"{where} {name} label")
                add(axis.get_offset_text(), f"{where} {name} offset")
        for loc in ("left", "center", "right"):
            title = {"left": ax._left_title, "center": ax.title, "right": ax._right_title}[loc]
            add(title, f"{where} title")
        for text in ax.texts:
            add(text, f"{where} text")
        add_legend(ax.get_legend(), where)
    for text in figure.texts:
        add(text, "figure text")
    for attribute in ("_suptitle", "_supxlabel", "_supylabel"):
        text = getattr(figure, attribute, None)
        if text is not None:
            add(text, "figure super-label")
    for legend in figure.legends:
        add_legend(legend, "figure")
    return placed


def _overlap(first: Bbox, second: Bbox, tolerance: float) -> bool:
    width = min(first.x1, second.x1) - max(first.x0, second.x0)
    height = min(first.y1, second.y1) - max(first.y0, second.y0)
    return width > tolerance and height > tolerance


def text_problems(figure: Figure, tolerance_px: float = TOLERANCE_PX) -> list[str]:
    """Every pair of overlapping texts and every text outside the figure, in words (empty when none)."""
    placed = placed_texts(figure)
    bounds = figure.bbox
    problems = [
        f"{item.label} leaves the figure"
        for item in placed
        if item.box.x0 < bounds.x0 - tolerance_px or item.box.y0 < bounds.y0 - tolerance_px
        or item.box.x1 > bounds.x1 + tolerance_px or item.box.y1 > bounds.y1 + tolerance_px
    ]  # fmt: skip
    for i, first in enumerate(placed):
        for second in placed[i + 1:]:
            if _related(first, second):
                continue
            if _overlap(first.box, second.box, tolerance_px):
                problems.append(f"{first.label} overlaps {second.label}")
    return problems


def _related(first: Placed, second: Placed) -> bool:
    """True for a legend and one of its own texts, or two texts of one legend (laid out by the legend)."""
    if first.owner is not None and first.owner is second.owner:
        return True
    return first.owner is second.artist or second.owner is first.artist


def data_points(ax: Axes) -> list[tuple[str, np.ndarray]]:
    """(artist label, N×2 display coordinates) of every visible data point of ``ax`` drawn inside its box: line
    vertices, scatter offsets, error-bar ends, and the corners and centre of each bar."""
    found = []
    for line in ax.lines:
        if line.get_visible() and len(line.get_xydata()):
            found.append((line.get_label(), line.get_transform().transform(line.get_xydata())))
    for collection in ax.collections:
        if not collection.get_visible():
            continue
        if isinstance(collection, PathCollection) and len(collection.get_offsets()):
            offsets = collection.get_offset_transform().transform(collection.get_offsets())
            found.append((collection.get_label(), offsets))
        elif isinstance(collection, LineCollection) and collection.get_segments():
            ends = np.concatenate([segment for segment in collection.get_segments() if len(segment)])
            found.append((collection.get_label(), collection.get_transform().transform(ends)))
    for patch in ax.patches:
        if isinstance(patch, Rectangle) and patch.get_visible() and patch.get_height() and patch.get_width():
            box = patch.get_window_extent()
            corners = [(box.x0, box.y0), (box.x1, box.y0), (box.x0, box.y1), (box.x1, box.y1),
                       ((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2)]  # fmt: skip
            found.append((patch.get_label(), np.asarray(corners)))
    inside = ax.bbox
    return [(label, points[(points[:, 0] >= inside.x0) & (points[:, 0] <= inside.x1)
                           & (points[:, 1] >= inside.y0) & (points[:, 1] <= inside.y1)])
            for label, points in found if np.isfinite(points).any()]  # fmt: skip


def legend_problems(figure: Figure, tolerance_px: float = 1.0) -> list[str]:
    """Every legend box (of an axes or of the figure) that holds a plotted data point of any axes, in words."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    legends = [(f"axes {index} legend", ax.get_legend()) for index, ax in enumerate(figure.axes)]
    legends += [("figure legend", legend) for legend in figure.legends]
    problems = []
    for name, legend in legends:
        if legend is None or not legend.get_visible():
            continue
        box = legend.get_window_extent(renderer).padded(-tolerance_px)
        for index, ax in enumerate(figure.axes):
            if not ax.get_visible():
                continue
            for label, points in data_points(ax):
                held = (points[:, 0] > box.x0) & (points[:, 0] < box.x1) & (points[:, 1] > box.y0) & (
                    points[:, 1] < box.y1)
                if held.any():
                    problems.append(f"{name} covers {int(held.sum())} point(s) of {label!r} in axes {index}")
    return problems
