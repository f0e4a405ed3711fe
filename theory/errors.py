"""The one error type pvq raises for bad input, and the one message for an unknown name.

It lives in `theory` because that package depends on nothing else in pvq; `measure`, `figures` and the CLI
import it. The CLI prints a :class:`PvqError`'s message and exits with status 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PvqError(ValueError):
    """Bad input: the message names what was wrong and what to do about it."""


def choose(kind: str, name: object, options: Iterable[object]) -> str:
    """``name`` when it is one of ``options``; else a PvqError "unknown {kind} …; choose one of …" that also
    suggests the closest valid name (``difflib.get_close_matches``) when there is one.

    The one home for "unknown X" messages, as lm-eval's registries answer an unknown task name.
    """
    valid = [str(option) for option in options]
    if isinstance(name, str) and name in valid:
        return name
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise PvqError(f"unknown {kind} {name!r}{hint}; choose one of {', '.join(valid)}")
