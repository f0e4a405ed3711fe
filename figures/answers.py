"""One-sentence answers and opening paragraphs of the thesis sections, declared next to the figures they summarize.

A catalog module declares its section's answer with :func:`answer` and the paragraph that opens the section in the
chapter with :func:`prose`; each ``function(tables)`` receives ``{experiment name: DataFrame}`` for the experiments
in ``needs`` and returns LaTeX text computed from them (the same text a caption states, so every number is written
once, by code). The HTML report shows every declared answer for every model with results (:mod:`figures.report`);
the chapter opens each section with its paragraph (:mod:`figures.paper`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from figures.registry import Tables
from theory.errors import PvqError

Sentence = Callable[[Tables], str]


@dataclass(frozen=True)
class SectionAnswer:
    """A section's answer in one sentence, computed from the tables of ``needs``."""

    section: str
    needs: tuple[str, ...]
    sentence: Sentence


ANSWERS: dict[str, SectionAnswer] = {}


def _registrar(registry: dict[str, SectionAnswer], what: str, section: str, needs: Sequence[str]
               ) -> Callable[[Sentence], Sentence]:  # fmt: skip
    """A decorator registering its function as the ``what`` of ``section`` in ``registry`` (one per section)."""

    def register(function: Sentence) -> Sentence:
        if section in registry:
            raise PvqError(f"section {section!r} declares two {what}s; give each section one")
        registry[section] = SectionAnswer(section, tuple(needs), function)
        return function

    return register


def answer(section: str, *, needs: Sequence[str]) -> Callable[[Sentence], Sentence]:
    """Register the decorated ``sentence(tables) -> str`` as the one-sentence answer of ``section``."""
    return _registrar(ANSWERS, "answer", section, needs)


PROSE: dict[str, SectionAnswer] = {}
"""The paragraph that opens each section of the chapter: the finding, the scale of the protocol and its threats to
validity, every number computed from the tables."""


def prose(section: str, *, needs: Sequence[str]) -> Callable[[Sentence], Sentence]:
    """Register the decorated ``paragraph(tables) -> str`` as the opening paragraph of ``section``."""
    return _registrar(PROSE, "paragraph", section, needs)


def section_paragraphs(tables: Tables) -> dict[str, str]:
    """Every declared paragraph whose experiments are all in ``tables``, by section."""
    return {section: declared.sentence({name: tables[name] for name in declared.needs})
            for section, declared in PROSE.items() if all(name in tables for name in declared.needs)}  # fmt: skip
