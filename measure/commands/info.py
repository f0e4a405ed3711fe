"""`pvq info`: Describe a model: blocks, sublayers, linear layers, parameter counts, grid detection."""

from __future__ import annotations

import argparse

from theory.errors import PvqError

HELP = "Describe a model: blocks, sublayers, linear layers, parameter counts, grid detection."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Placeholder until the command is built."""


def run(args: argparse.Namespace) -> int:
    raise PvqError("`pvq info` is not built yet")
