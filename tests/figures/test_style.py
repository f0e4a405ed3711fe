"""The thesis style: distinct fixed method styles, a deterministic fallback, figures at text width."""

from __future__ import annotations

import subprocess
import sys

import matplotlib

from figures.style import (
    METHOD_STYLE,
    OKABE_ITO,
    REMOVAL_BROWNS,
    THESIS_RC,
    method_order,
    method_style,
    new_figure,
)


def test_every_declared_method_has_its_own_colour_marker_pair_from_the_palette():
    pairs = [(style.color, style.marker) for style in METHOD_STYLE.values()]
    assert len(set(pairs)) == len(pairs)
    assert {style.color for style in METHOD_STYLE.values()} <= set(OKABE_ITO.values()) | set(REMOVAL_BROWNS)


def test_removal_orderings_have_a_colour_family_no_method_shares():
    removal = {style.color for name, style in METHOD_STYLE.items() if name.startswith("remove:")}
    others = {style.color for name, style in METHOD_STYLE.items() if not name.startswith("remove:")}
    assert removal == set(REMOVAL_BROWNS) and not removal & others


def test_unknown_method_style_is_the_same_in_a_fresh_interpreter():
    here = method_style("some_new_method")
    code = "from figures.style import method_style; s = method_style('some_new_method'); print(s.color, s.marker)"
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert there == [here.color, here.marker]
    assert here.color in OKABE_ITO.values() and here.label == "some_new_method"


def test_method_order_puts_declared_methods_first_in_declaration_order():
    assert method_order(["zeta", "magnitude", "alpha", "int"]) == ["int", "magnitude", "alpha", "zeta"]


def test_figures_are_drawn_at_the_15_cm_text_width():
    with matplotlib.rc_context(THESIS_RC):
        figure, _ = new_figure()
    assert abs(figure.get_figwidth() * 2.54 - 15.0) < 1e-9
