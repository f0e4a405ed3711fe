"""`pvq run`: Run a declared experiment grid locally or on SLURM."""

from __future__ import annotations

import argparse

from theory.errors import PvqError

HELP = "Run a declared experiment grid locally or on SLURM."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Placeholder until the command is built."""


def run(args: argparse.Namespace) -> int:
    raise PvqError("`pvq run` is not built yet")
