"""`pvq ledger`: Per-layer error ledger of pruning and quantization methods on real activations."""

from __future__ import annotations

import argparse

from theory.errors import PvqError

HELP = "Per-layer error ledger of pruning and quantization methods on real activations."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Placeholder until the command is built."""


def run(args: argparse.Namespace) -> int:
    raise PvqError("`pvq ledger` is not built yet")
