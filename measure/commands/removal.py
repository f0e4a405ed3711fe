"""`pvq remove`: Block/sublayer importance and layer removal measured against the bounds."""

from __future__ import annotations

import argparse

from theory.errors import PvqError

HELP = "Block/sublayer importance and layer removal measured against the bounds."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Placeholder until the command is built."""


def run(args: argparse.Namespace) -> int:
    raise PvqError("`pvq remove` is not built yet")
