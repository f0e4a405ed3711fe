"""The registry of thesis figures and tables (artifacts), each declared with the experiments it needs.

Adding a figure is one decorated function in a module of :mod:`figures.catalog`::

    @figure("gaussian_sqnr_vs_bits", needs=("theory_formats_gaussian",), section=SECTION,
            caption=lambda tables, facts: "SQNR of ...")
    def gaussian_sqnr_vs_bits(tables):
        fig, ax = new_figure()
        ...
        return fig

``draw(tables)`` receives ``{experiment name: DataFrame}`` and returns a matplotlib ``Figure`` (for
``@figure``) or a pandas ``Styler`` (for ``@table``, see :func:`figures.style.thesis_table`).
``caption(tables, facts)`` returns LaTeX text built from the data; ``facts`` holds the model id and
hash and each experiment's config (the protocol). Pass data strings through :func:`escape_tex`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from figures.experiments import lookup
from theory.errors import PvqError

OUTPUT_FOLDERS = {"figure": "figures", "table": "tables"}
CATALOG = "figures.catalog"
CATALOG_FOLDER = Path(__file__).resolve().parent / "catalog"
CATALOG_ORDER: tuple[str, ...] = ("theory", "models", "weights", "bounds", "removal", "frontier", "mixture")
"""Catalog modules in the order of the results chapter; modules not listed follow alphabetically."""
Tables = Mapping[str, pd.DataFrame]
Caption = Callable[[Tables, Mapping[str, Any]], str]


@dataclass(frozen=True)
class Artifact:
    """A figure or table: ``draw(tables)`` plus the experiments it needs and a caption from data."""

    name: str
    kind: str
    draw: Callable[[Tables], Any]
    needs: tuple[str, ...]
    caption: Caption
    section: str
    default: bool = True
    """False for an artifact whose experiments are too long for the default run (``make figures``): it renders
    only when named (``pvq figures --only NAME``)."""

    @property
    def folder(self) -> str:
        """Output subfolder: ``figures`` or ``tables``."""
        return OUTPUT_FOLDERS[self.kind]

    def stem(self, out_dir: Path) -> Path:
        """``<out>/figures/NAME`` or ``<out>/tables/NAME`` (suffixes are added per file)."""
        return Path(out_dir) / self.folder / self.name

    def sidecar(self, out_dir: Path) -> Path:
        """The provenance sidecar ``<out>/<folder>/NAME.json``."""
        return self.stem(out_dir).with_suffix(".json")


ARTIFACTS: dict[str, Artifact] = {}


def _register(
    kind: str, name: str, needs: Sequence[str], caption: Caption, section: str, default: bool = True
) -> Callable:
    if not needs:
        raise PvqError(f"{kind} {name!r} declares no experiments; list the result tables it draws in needs=")

    def register(draw: Callable[[Tables], Any]) -> Callable[[Tables], Any]:
        if name in ARTIFACTS:
            raise PvqError(f"{kind} {name!r} is registered twice; give each figure and table a unique name")
        ARTIFACTS[name] = Artifact(name, kind, draw, tuple(needs), caption, section, default)
        return draw

    return register


def figure(name: str, *, needs: Sequence[str], caption: Caption, section: str, default: bool = True) -> Callable:
    """Register ``draw(tables) -> matplotlib.figure.Figure`` as figure ``name`` (``default``: see Artifact)."""
    return _register("figure", name, needs, caption, section, default)


def table(name: str, *, needs: Sequence[str], caption: Caption, section: str, default: bool = True) -> Callable:
    """Register ``draw(tables) -> pandas Styler`` as table ``name`` (``default``: see :class:`Artifact`)."""
    return _register("table", name, needs, caption, section, default)


def load_catalog() -> dict[str, Artifact]:
    """Import every module of :mod:`figures.catalog` (:data:`CATALOG_ORDER`, then the rest by name): the catalog
    sits above the registry (its modules register into it), so it is discovered by name, never imported here."""
    discovered = sorted(info.name for info in pkgutil.iter_modules([str(CATALOG_FOLDER)]))
    ordered = [name for name in CATALOG_ORDER if name in discovered]
    modules = [f"{CATALOG}.{name}" for name in ordered + [name for name in discovered if name not in ordered]]
    for module in modules:
        importlib.import_module(module)
    # A catalog module imported earlier (e.g. by a module reusing its helpers) must not change the order.
    rank = {module: index for index, module in enumerate(modules)}
    ordered_artifacts = sorted(ARTIFACTS.values(), key=lambda item: rank.get(item.draw.__module__, len(rank)))
    ARTIFACTS.clear()
    ARTIFACTS.update((artifact.name, artifact) for artifact in ordered_artifacts)
    return ARTIFACTS


def select(names: Sequence[str] | None = None) -> list[Artifact]:
    """The artifacts called ``names`` (every default one when None), in registration order."""
    if not names:
        return [artifact for artifact in ARTIFACTS.values() if artifact.default]
    unknown = [name for name in names if name not in ARTIFACTS]
    if unknown:
        raise PvqError(
            f"unknown figure/table {', '.join(unknown)}; see `pvq figures --list` "
            f"(registered: {', '.join(ARTIFACTS) or 'none'})"
        )
    return [ARTIFACTS[name] for name in names]


def needed_experiments(artifacts: Sequence[Artifact]) -> list[str]:
    """The experiments the artifacts need, each once, in first-use order."""
    return list(dict.fromkeys(name for artifact in artifacts for name in artifact.needs))


def synthetic_tables(needs: Sequence[str], seed: int = 0) -> dict[str, pd.DataFrame]:
    """Small stand-in tables for ``needs``, from each experiment's declared ``synthetic(rng)``."""
    rng = np.random.default_rng(seed)
    return {exp.name: exp.synthetic(rng) for exp in lookup(needs)}


_TEX_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def escape_tex(text: Any) -> str:
    """``text`` with LaTeX's special characters escaped, for data values inside captions."""
    return "".join(_TEX_SPECIALS.get(char, char) for char in str(text))


def check_tex(text: str, where: str) -> str:
    """``text`` unchanged when it is safe inside a LaTeX argument (``\\caption{...}``): no bare ``%`` (it would
    comment out the rest of the line, closing brace included) and balanced braces, escaped ``\\%``, ``\\{``,
    ``\\}`` aside. Raises one PvqError naming ``where`` otherwise, before anything is written."""
    depth, escaped = 0, False
    for position, char in enumerate(text):
        if escaped:
            escaped = False
            continue
        if char == "\\":
            escaped = True
        elif char == "%":
            raise PvqError(f"{where}: a bare % at character {position} of its LaTeX text "
                           f"({text[max(0, position - 40):position + 10]!r}); escape it with escape_tex or \\%")
        elif char in "{}":
            depth += 1 if char == "{" else -1
            if depth < 0:
                break
    if depth != 0:
        raise PvqError(f"{where}: unbalanced braces in its LaTeX text; escape literal braces with escape_tex")
    return text
