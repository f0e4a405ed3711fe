"""Plain answers and opening paragraphs of the thesis sections, declared next to the figures they summarize.

A catalog module declares its section's answer with :func:`answer` (the thesis question in plain words, and one or
two sentences a reader outside the field follows, with the interval and the protocol's scale) and the paragraph
that opens the section in the chapter with :func:`prose`; each ``function(tables)`` receives ``{experiment name:
DataFrame}`` for the experiments in ``needs`` and returns LaTeX text computed from them, so every number is written
once, by code. An answer whose experiments are opt-in declares what to say while their tables are missing
(``missing``). The HTML report and ``ANSWERS.md`` show every declared answer for every model
(:mod:`figures.report`); the chapter opens each section with its paragraph and closes with the answers
(:mod:`figures.paper`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from figures.registry import CATALOG_ORDER, Tables
from theory.errors import PvqError

Sentence = Callable[[Tables], str]


@dataclass(frozen=True)
class SectionAnswer:
    """A section's answer in one sentence, computed from the tables of ``needs``."""

    section: str
    needs: tuple[str, ...]
    sentence: Sentence
    question: str = ""
    """The thesis question the answer answers, in plain words (the answer's heading)."""
    missing: str = ""
    """What the answer says while a table of ``needs`` is missing (an opt-in experiment: how to measure it)."""


ANSWERS: dict[str, SectionAnswer] = {}


def _registrar(registry: dict[str, SectionAnswer], what: str, section: str, needs: Sequence[str],
               question: str = "", missing: str = "") -> Callable[[Sentence], Sentence]:  # fmt: skip
    """A decorator registering its function as the ``what`` of ``section`` in ``registry`` (one per section)."""

    def register(function: Sentence) -> Sentence:
        if section in registry:
            raise PvqError(f"section {section!r} declares two {what}s; give each section one")
        registry[section] = SectionAnswer(section, tuple(needs), function, question, missing)
        return function

    return register


def answer(section: str, *, needs: Sequence[str], question: str, missing: str = ""
           ) -> Callable[[Sentence], Sentence]:  # fmt: skip
    """Register the decorated ``sentence(tables) -> str`` as the plain answer of ``section`` to ``question``
    (``missing``: what to say while a table of ``needs`` is missing)."""
    return _registrar(ANSWERS, "answer", section, needs, question, missing)


def stated_answers(tables: Tables) -> list[tuple[str, str]]:
    """(question, LaTeX answer) of every declared answer, in the chapter's order (:func:`chapter_rank`): computed
    when its tables are all in ``tables``, else its ``missing`` text (answers without one are left out)."""
    stated = []
    for declared in sorted(ANSWERS.values(), key=lambda declared: chapter_rank(declared.sentence)):
        if all(name in tables for name in declared.needs):
            text = declared.sentence({name: tables[name] for name in declared.needs})
        else:
            text = declared.missing
        if text:
            stated.append((declared.question, text))
    return stated


def chapter_rank(function: Sentence) -> int:
    """Where the catalog module declaring ``function`` stands in the chapter
    (:data:`figures.registry.CATALOG_ORDER`; modules not listed after it), whichever was imported first."""
    module = function.__module__.rsplit(".", 1)[-1]
    return CATALOG_ORDER.index(module) if module in CATALOG_ORDER else len(CATALOG_ORDER)


def held_out_scale(tokens: Any) -> str:
    """The protocol's scale in words: "one model, N held-out tokens" (just "one model" without a count)."""
    return "one model" if tokens is None or pd.isna(tokens) else f"one model, {int(tokens)} held-out tokens"


def interval_verdict(low: float, high: float, below: str, above: str, tokens: Any) -> str:
    """``below`` when the 95 % interval of a difference lies below zero, ``above`` when above, else
    "indistinguishable at N tokens": a difference is named only when its interval excludes zero."""
    if high < 0:
        return below
    if low > 0:
        return above
    return indistinguishable(tokens)


def indistinguishable(tokens: Any) -> str:
    """ "indistinguishable at N tokens" (just "indistinguishable" without a count)."""
    return "indistinguishable" + ("" if tokens is None or pd.isna(tokens) else f" at {int(tokens)} tokens")


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
