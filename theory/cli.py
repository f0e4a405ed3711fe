"""`pvq theory`: Analytic SQNR of quantization vs magnitude pruning on a distribution, at equal compression."""

from __future__ import annotations

import argparse

from theory.errors import PvqError

HELP = "Analytic SQNR of quantization vs magnitude pruning on a distribution, at equal compression."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Placeholder until the command is built."""


def run(args: argparse.Namespace) -> int:
    raise PvqError("`pvq theory` is not built yet")
