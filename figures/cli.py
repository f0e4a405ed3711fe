"""`pvq figures`: Run missing experiments and render every registered figure and table.

Experiments whose cached table matches their cache key (config + model hash + code version + seed)
are reused; the others run one at a time, so Ctrl-C keeps what finished and a rerun resumes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from measure.commands.common import add_device_arguments

if TYPE_CHECKING:
    from figures.experiments import ExperimentContext

HELP = "Run missing experiments and render every registered figure and table."
DEFAULT_RESULTS = "results"
DEFAULT_OUT = "paper"


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `pvq figures` and `pvq paper`."""
    parser.add_argument("--model", default=None,
                        help="model name or path for model experiments (default: the default model)")
    parser.add_argument("--results", type=Path, default=Path(DEFAULT_RESULTS),
                        help=f"folder of cached experiment tables (default: {DEFAULT_RESULTS}/)")
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT),
                        help=f"paper folder receiving figures/, tables/, sections/ (default: {DEFAULT_OUT}/)")
    add_device_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of every experiment (default: 0)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`pvq figures [--only NAME ...] [--list] [--model NAME] [--results DIR] [--out DIR] [--device] [--dtype]`."""
    parser.add_argument("--only", nargs="+", metavar="NAME", help="render only these figures/tables")
    parser.add_argument("--list", action="store_true", help="list the registered figures and tables and exit")
    add_build_arguments(parser)


def listing(out_dir: Path) -> str:
    """One line per registered artifact: kind, name, the experiments it needs, its output file."""
    from figures.registry import load_catalog

    lines = []
    for artifact in load_catalog().values():
        suffix = ".pdf" if artifact.kind == "figure" else ".tex"
        lines.append(
            f"{artifact.kind:<7} {artifact.name:<32} needs {', '.join(artifact.needs):<48} "
            f"{artifact.stem(out_dir).with_suffix(suffix)}"
        )
    return "\n".join(lines)


def experiment_context(args: argparse.Namespace) -> ExperimentContext:
    """What the experiments use: model, results folder, seed, and ``--device`` / ``--dtype`` resolved (a missing
    CUDA device is a PvqError here, before any work); the model loads in that dtype on first use."""
    from figures.experiments import ExperimentContext
    from measure.commands.common import placement
    from measure.defaults import DEFAULT_MODEL
    from measure.jobs import model_loader

    place = placement(args, mode="full")
    return ExperimentContext(
        model_name=args.model or DEFAULT_MODEL, results_root=args.results, device=place.device, seed=args.seed,
        load_model=model_loader(place.dtype_name),
    )


def run_build(
    args: argparse.Namespace, only: list[str] | None = None, context: ExperimentContext | None = None
) -> str:
    """Run the experiments and render the selected artifacts; return the summary text."""
    from figures.registry import load_catalog, select
    from figures.render import build, summary

    registered = list(load_catalog().values())
    report = build(select(only), registered, context or experiment_context(args), args.out)
    return summary(report)


def run(args: argparse.Namespace) -> int:
    """List, or build and print the summary."""
    if args.list:
        print(listing(args.out))
        return 0
    print(run_build(args, args.only))
    return 0
