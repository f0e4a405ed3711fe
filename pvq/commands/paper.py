"""`pvq paper`: Render every figure and table, then build the results chapter PDF with latexmk.

The chapter shows the model of this run (``--model``, default: the default model) and the shared model-free
and cross-model artifacts.

Without LaTeX it stops before any work and prints how to install it
(``apt-get install texlive-latex-extra latexmk`` on Debian/Ubuntu).
"""

from __future__ import annotations

import argparse

from figures.paper import build_pdf, require_latexmk
from pvq.commands.figures import ALL_MODELS, add_build_arguments, experiment_context, run_build
from theory.errors import PvqError

HELP = "Render every figure and table, then build the results chapter PDF (paper/build/main.pdf) with latexmk."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`pvq paper [--model NAME] [--results DIR] [--out DIR] [--device D] [--dtype T]`."""
    add_build_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Check for latexmk, run `pvq figures`, build the PDF and print where it is."""

    if args.model == ALL_MODELS:
        raise PvqError(f"pvq paper builds one model's chapter; render every default with `pvq figures --models "
                       f"{ALL_MODELS}`, then run `pvq paper` (the default model) or `pvq paper --model NAME`")
    context = experiment_context(args)
    require_latexmk()
    print(run_build(args, context=context, chapter=True))
    print(f"paper: {build_pdf(args.out)}")
    return 0
