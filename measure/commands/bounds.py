"""`pvq bounds`: Exact optima and bounds of the per-layer quantization and pruning problems."""

from __future__ import annotations

import argparse

from theory.errors import PvqError

HELP = "Exact optima and bounds of the per-layer quantization and pruning problems."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Placeholder until the command is built."""


def run(args: argparse.Namespace) -> int:
    raise PvqError("`pvq bounds` is not built yet")
