"""`pvq paper`: Render every figure and table, then build the results chapter PDF with latexmk.

Without LaTeX it stops before any work and prints how to install it
(``apt-get install texlive-latex-extra latexmk`` on Debian/Ubuntu).
"""

from __future__ import annotations

import argparse

from pvq.commands.figures import add_build_arguments

HELP = "Render every figure and table, then build the results chapter PDF (paper/build/main.pdf) with latexmk."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`pvq paper [--model NAME] [--results DIR] [--out DIR] [--device D] [--dtype T]`."""
    add_build_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Check for latexmk, run `pvq figures`, build the PDF and print where it is."""
    from pvq.commands.figures import experiment_context, run_build
    from figures.paper import build_pdf, require_latexmk

    context = experiment_context(args)
    require_latexmk()
    print(run_build(args, context=context))
    print(f"paper: {build_pdf(args.out)}")
    return 0
