"""`pvq eval`: Perplexity and lm-eval benchmarks of a (compressed) model, in memory."""

from __future__ import annotations

import argparse

from theory.errors import PvqError

HELP = "Perplexity and lm-eval benchmarks of a (compressed) model, in memory."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Placeholder until the command is built."""


def run(args: argparse.Namespace) -> int:
    raise PvqError("`pvq eval` is not built yet")
