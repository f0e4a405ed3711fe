"""LaTeX as plain Unicode text, for showing captions and booktabs tables outside LaTeX (the HTML report).

Covers what the captions and tables of :mod:`figures.catalog` use: inline math (``$...$``), escaped specials
(``\\_``, ``\\%``), Greek letters and common math symbols, ``\\mathrm{}``-style wrappers, ``\\ref`` and
``~``; an unknown command keeps its name without the backslash, so no text is lost. Tables: the rows of a
``tabular`` (or ``longtable``) between ``\\toprule`` and ``\\bottomrule``, cells split at unescaped ``&``.
"""

from __future__ import annotations

import re

SYMBOLS = {
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "Delta": "Δ", "epsilon": "ε", "varepsilon": "ε",
    "kappa": "κ", "lambda": "λ", "mu": "μ", "nu": "ν", "pi": "π", "rho": "ρ", "sigma": "σ", "Sigma": "Σ",
    "tau": "τ", "phi": "φ", "chi": "χ", "omega": "ω", "ell": "ℓ", "sum": "Σ", "prod": "Π", "infty": "∞",
    "pm": "±", "times": "×", "cdot": "·", "le": "≤", "leq": "≤", "ge": "≥", "geq": "≥", "neq": "≠",
    "approx": "≈", "equiv": "≡", "in": "∈", "to": "→", "rightarrow": "→", "lVert": "‖", "rVert": "‖",
    "Vert": "‖", "lvert": "|", "rvert": "|", "top": "ᵀ", "log": "log", "ln": "ln", "exp": "exp", "cos": "cos",
    "arccos": "arccos", "min": "min", "max": "max", "quad": " ", "qquad": " ", "dots": "…", "ldots": "…",
    "textbackslash": "\\", "textasciitilde": "~", "textasciicircum": "^", "times10": "×10", "%": "%", "&": "&",
    "$": "$", "#": "#", "_": "_", "{": "{", "}": "}", ",": " ", ";": " ", "!": "", " ": " ",
}  # fmt: skip
WRAPPERS = ("mathrm", "mathbb", "mathbf", "mathit", "mathcal", "operatorname", "text", "textbf", "textit", "emph",
            "texttt", "textrm", "textsc", "boldsymbol", "hat", "tilde", "bar", "underline", "mbox")  # fmt: skip
DROPPED = ("label", "hspace", "vspace", "phantom")
_COMMAND = re.compile(r"\\([A-Za-z]+|.)")
_WRAPPED = re.compile(r"\\(" + "|".join(WRAPPERS) + r")\s*\{([^{}]*)\}")
_DROP = re.compile(r"\\(" + "|".join(DROPPED) + r")\s*\{[^{}]*\}")
_REF = re.compile(r"(Fig\.|Table|Tab\.|Eq\.)?~?\\ref\{(?:fig|tab|eq):([^{}]*)\}")
_SCRIPT = re.compile(r"([_^])\{([^{}]*)\}")
_SUPERSCRIPTS = str.maketrans("0123456789+-=()n", "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁼⁽⁾ⁿ")
_SUBSCRIPTS = str.maketrans("0123456789+-=()", "₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎")


def _script(match: re.Match[str]) -> str:
    """``^{2}`` → ²; other scripts keep the marker (``_{ij}`` → ``_ij``)."""
    marker, body = match.groups()
    table = _SUPERSCRIPTS if marker == "^" else _SUBSCRIPTS
    converted = body.translate(table)
    if all(not char.isascii() or char == " " for char in converted):
        return converted
    return marker + (body if len(body) == 1 else f"({body})")


def _command(match: re.Match[str]) -> str:
    name = match.group(1)
    return SYMBOLS.get(name, name)


_VERBATIM_HYPHEN = "\x01"
"""Stands for a hyphen inside ``\\texttt{}`` while ``--`` elsewhere becomes an en dash (``--limit`` is a flag)."""


def plain_text(tex: str) -> str:
    """``tex`` (a caption or table cell) as readable Unicode text without LaTeX markup."""
    text = re.sub(r"\\texttt\{([^{}]*)\}", lambda m: m.group(1).replace("-", _VERBATIM_HYPHEN), tex)
    text = _REF.sub(lambda m: f"{m.group(1) or 'see'} {m.group(2)}", text)
    text = _DROP.sub("", text)
    previous = None
    while previous != text:  # unwrap nested \mathrm{\mathbb{E}} from the inside out
        previous = text
        text = _WRAPPED.sub(lambda m: m.group(2), text)
    text = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"(\1)/(\2)", text)
    text = re.sub(r"\\sqrt\{([^{}]*)\}", r"√(\1)", text)
    text = _SCRIPT.sub(_script, text)
    text = re.sub(r"\^\\top\b", "ᵀ", text)
    text = re.sub(r"\^([0-9])", lambda m: m.group(1).translate(_SUPERSCRIPTS), text)
    text = re.sub(r"(?<!\\)[${}]", "\0", text.replace("\\\\", "\n"))  # ends a command name, then dropped
    text = text.replace("---", "—").replace("--", "–").replace("``", "“").replace("''", "”")
    text = re.sub(r"(?<!\\)~", "\u00a0", text)
    text = _COMMAND.sub(_command, text).replace("\0", "").replace(_VERBATIM_HYPHEN, "-")
    return re.sub(r"[ \t]+", " ", text).strip()


def _split_cells(row: str) -> list[str]:
    """Cells of one tabular row, split at ``&`` not preceded by a backslash."""
    return [cell.strip() for cell in re.split(r"(?<!\\)&", row)]


_MULTICOLUMN = re.compile(r"^\\multicolumn\{(\d+)\}\{[^{}]*\}\{(.*)\}$", re.DOTALL)


def tabular_rows(tex: str) -> tuple[list[list[tuple[str, int]]], list[list[tuple[str, int]]]]:
    """The header and body rows of a booktabs table: each row a list of ``(plain text, column span)`` cells.

    Header rows are those before ``\\midrule``, body rows those after it, up to ``\\bottomrule``; rule lines,
    ``\\endhead``-style markers and comments are skipped."""
    start = tex.find("\\toprule")
    end = tex.find("\\bottomrule")
    if start < 0 or end < 0:
        raise ValueError("not a booktabs table: no \\toprule ... \\bottomrule")
    body = tex[start + len("\\toprule"):end]
    head_text, _, rows_text = body.partition("\\midrule")
    if not rows_text:
        head_text, rows_text = "", head_text

    def rows(text: str) -> list[list[tuple[str, int]]]:
        parsed = []
        for line in re.split(r"(?<!\\)\\\\(?:\[[^\]]*\])?", text):
            line = re.sub(r"\\(cmidrule(\([a-z]*\))?\{[^{}]*\}|midrule|endhead|endfirsthead|endfoot|endlastfoot|"
                          r"addlinespace(\[[^\]]*\])?)", "", line)  # fmt: skip
            line = "\n".join(part for part in line.splitlines() if not part.lstrip().startswith("%")).strip()
            if not line:
                continue
            cells = []
            for cell in _split_cells(line):
                multi = _MULTICOLUMN.match(cell)
                cells.append((plain_text(multi.group(2)), int(multi.group(1))) if multi else (plain_text(cell), 1))
            parsed.append(cells)
        return parsed

    return rows(head_text), rows(rows_text)


def column_alignments(tex: str) -> list[str]:
    """The alignment letter (``l``, ``c``, ``r``; ``p{..}`` columns as ``l``) of each column of the first
    ``tabular``/``longtable`` in ``tex``; empty when there is none."""
    found = re.search(r"\\begin\{(?:tabular|longtable)\}(?:\[[a-z]\])?\{((?:[^{}]|\{[^{}]*\})*)\}", tex)
    if found is None:
        return []
    spec = re.sub(r"@\{[^{}]*\}|\|", "", found.group(1))
    spec = re.sub(r"[pmb]\{[^{}]*\}", "l", spec)
    return [letter for letter in spec if letter in "lcr"]
