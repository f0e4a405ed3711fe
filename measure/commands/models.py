"""`pvq models`: List the embedded default models and where they are cached."""

from __future__ import annotations

import argparse

from theory.errors import PvqError

HELP = "List the embedded default models and where they are cached."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Placeholder until the command is built."""


def run(args: argparse.Namespace) -> int:
    raise PvqError("`pvq models` is not built yet")
