"""Compression specs as people read them, for every table and paragraph: ``gptq:4:g128`` → "GPTQ 4-bit, g128",
``magnitude:0.5+rtn:4:g128`` → "magnitude 50 % + RTN 4-bit, g128", ``remove:bi:4`` → "BI removal, 4 blocks".

Plain text (tables escape it for LaTeX; paragraphs pass it through :func:`figures.registry.escape_tex`). A term
this module does not know keeps its spec text, so no information is lost.
"""

from __future__ import annotations

import re

METHOD_NAMES = {"gptq": "GPTQ", "rtn": "RTN", "magnitude": "magnitude", "sparsegpt": "SparseGPT", "wanda": "Wanda"}
"""Display names of the compression methods a spec term starts with."""
ORDERING_NAMES = {"bi": "BI", "angular": "angular", "reverse": "reverse", "random": "random"}
"""Display names of the block-removal orderings (``remove:<ordering>:<blocks>``)."""
KEEP_LABEL = "kept (16-bit)"
ORIGINAL_LABEL = "original (16-bit)"
_FRACTION = re.compile(r"0?\.\d+")


def _parameter(text: str) -> str:
    """One parameter of a method term: a bit width, a fraction (as a percentage), a group or the channel grid."""
    if text.isdigit():
        return f"{text}-bit"
    if _FRACTION.fullmatch(text):
        return f"{100 * float(text):g} %"
    return "per channel" if text == "channel" else text


def _removal_label(parameters: list[str]) -> str:
    if not parameters:
        return "block removal"
    if parameters[0].startswith("blocks="):
        return f"blocks {parameters[0].removeprefix('blocks=').replace(',', ', ')} removed"
    ordering = ORDERING_NAMES.get(parameters[0], parameters[0])
    count = f", {parameters[1]} blocks" if len(parameters) > 1 else ""
    return f"{ordering} removal{count}"


def _width_label(parameters: list[str]) -> str:
    kind, _, value = (parameters[0] if parameters else "").partition("=")
    what = {"mlp": "MLP channels", "heads": "KV groups"}.get(kind, kind)
    refit = ", no refit" if "norefit" in parameters else ""
    share = f"{100 * float(value):g} % of " if _FRACTION.fullmatch(value) else ""
    return f"width: {share}{what}{refit}"


def term_label(term: str) -> str:
    """One term of a spec (no ``+``) in words; an unknown term as written."""
    head, *parameters = term.split(":")
    if head == "keep":
        return KEEP_LABEL
    if head == "remove":
        return _removal_label(parameters)
    if head == "shrink":
        return _width_label(parameters)
    if head not in METHOD_NAMES:
        return term
    words = [_parameter(parameter) for parameter in parameters]
    return " ".join([METHOD_NAMES[head], *words[:1]]) + "".join(f", {word}" for word in words[1:])


def spec_label(spec: str) -> str:
    """A compression spec in words, its terms joined by " + " (the empty spec: the original model)."""
    if not str(spec).strip():
        return ORIGINAL_LABEL
    return " + ".join(term_label(term) for term in str(spec).split("+"))
