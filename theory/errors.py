"""The one error type pvq raises for bad input; the CLI prints its message and exits with status 2.

It lives in `theory` because that package depends on nothing else in pvq; `measure` and `figures` import it.
"""


class PvqError(ValueError):
    """Bad input: the message names what was wrong and what to do about it."""
