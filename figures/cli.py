"""`pvq figures`: Run missing experiments and render every registered figure and table."""

from __future__ import annotations

import argparse

from theory.errors import PvqError

HELP = "Run missing experiments and render every registered figure and table."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Placeholder until the command is built."""


def run(args: argparse.Namespace) -> int:
    raise PvqError("`pvq figures` is not built yet")
