"""One-sentence answers of the thesis sections, declared next to the figures they summarize.

A catalog module declares its section's answer with :func:`answer`; ``sentence(tables)`` receives
``{experiment name: DataFrame}`` for the experiments in ``needs`` and returns LaTeX text computed from them
(the same text a caption states, so the answer is written once). The HTML report shows every declared answer
for every model with results (:mod:`figures.report`).
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


def answer(section: str, *, needs: Sequence[str]) -> Callable[[Sentence], Sentence]:
    """Register the decorated ``sentence(tables) -> str`` as the one-sentence answer of ``section``."""

    def register(sentence: Sentence) -> Sentence:
        if section in ANSWERS:
            raise PvqError(f"section {section!r} declares two answers; give each section one sentence")
        ANSWERS[section] = SectionAnswer(section, tuple(needs), sentence)
        return sentence

    return register
