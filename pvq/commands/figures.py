"""`pvq figures`: Run missing experiments and render every registered figure and table.

Experiments whose cached table matches their cache key (config + model hash + code version + seed)
are reused; the others run one at a time, so Ctrl-C keeps what finished and a rerun resumes. Each one
is announced as it starts; the warnings and bars of the libraries it drives show only with ``--verbose``.
``--archive FILE.tar.gz`` then packs the results and the rendered artifacts (:mod:`figures.archive`).
``--models all`` (or ``--model all``) runs the whole build on every embedded default in turn, the default model
first: each model's home, then the cross-model section over all of them (``make figures-all``); every
experiment's settings check runs on every model before the first experiment does.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from figures.archive import write_archive
from figures.build import build, summary
from figures.experiments import ExperimentContext, check_experiments, lookup
from figures.layout import artifact_home
from figures.registry import load_catalog, needed_experiments, select
from measure.models.defaults import DEFAULT_MODEL, DEFAULT_MODELS
from measure.records.store import ARCHIVE_SUFFIXES, RESULTS_DIR
from pvq.commands.common import add_device_arguments, placement
from pvq.scale.jobs import model_loader
from theory.errors import PvqError

if TYPE_CHECKING:
    from figures.experiments import ExperimentContext, check_experiments, lookup

HELP = "Run missing experiments and render every registered figure and table."
DEFAULT_OUT = "paper"
ALL_MODELS = "all"
"""The ``--model`` value that names every embedded default (:data:`measure.models.defaults.DEFAULT_MODELS`)."""


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `pvq figures` and `pvq paper`."""
    parser.add_argument("--model", "--models", dest="model", default=None,
                        help="model name or path for model experiments (default: the default model); "
                        f"{ALL_MODELS!r}: every embedded default ({', '.join(DEFAULT_MODELS)}) in turn, then the "
                        "cross-model section over all of them")  # fmt: skip
    parser.add_argument("--results", type=Path, default=Path(RESULTS_DIR),
                        help=f"folder of cached experiment tables (default: {RESULTS_DIR}/)")
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT),
                        help=f"paper folder receiving figures/, tables/, sections/ (default: {DEFAULT_OUT}/)")
    add_device_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of every experiment (default: 0)")
    parser.add_argument("--verbose", action="store_true",
                        help="also show the warnings, log messages and progress bars of the libraries the "
                        "experiments drive (lm-eval, transformers, cvxpy, ...); pvq's own always show")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`pvq figures [--only NAME ...] [--list] [--archive FILE] [--model NAME] [--results DIR] [--out DIR]
    [--device] [--dtype] [--seed] [--verbose]`."""
    parser.add_argument("--only", nargs="+", metavar="NAME", help="render only these figures/tables")
    parser.add_argument("--list", action="store_true", help="list the registered figures and tables and exit")
    parser.add_argument("--archive", type=Path, metavar="FILE.tar.gz",
                        help="afterwards pack the result tables, the rendered figures and tables and a manifest "
                        "of their sha256 into this archive, for publishing (compare with `pvq verify FILE`)")
    add_build_arguments(parser)


def listing(out_dir: Path, model_name: str | None = None) -> str:
    """One line per registered artifact: kind, name, the experiments it needs, its output file for
    ``model_name`` (default: the default model)."""

    lines = []
    for artifact in load_catalog().values():
        suffix = ".pdf" if artifact.kind == "figure" else ".tex"
        home = artifact_home(out_dir, artifact, model_name or DEFAULT_MODEL)
        lines.append(
            f"{artifact.kind:<7} {artifact.name:<32} needs {', '.join(artifact.needs):<48} "
            f"{artifact.stem(home).with_suffix(suffix)}{'' if artifact.default else '  (only with --only)'}"
        )
    return "\n".join(lines)


def model_names(model: str | None) -> list[str]:
    """The models one build covers: for ``all``, every embedded default with the default model first (its
    chapter is written first and kept); else the model named, the default model when None."""
    if model == ALL_MODELS:
        return [DEFAULT_MODEL, *(name for name in DEFAULT_MODELS if name != DEFAULT_MODEL)]
    return [model or DEFAULT_MODEL]


def _for_model(args: argparse.Namespace, name: str) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "model": name})


def check_models(args: argparse.Namespace, names: list[str]) -> None:
    """The settings check of every experiment the build needs (:func:`figures.experiments.check_experiments`) on
    each model of ``names`` in turn (each loaded, then let go), so that a model refusing a setting stops the run
    before any experiment of any model runs."""
    load_catalog()
    experiments = lookup(needed_experiments(select(args.only)))
    for name in names:
        check_experiments(experiments, experiment_context(_for_model(args, name)))


def experiment_context(args: argparse.Namespace) -> ExperimentContext:
    """What the experiments use: model, results folder, seed, and ``--device`` / ``--dtype`` resolved (a missing
    CUDA device is a PvqError here, before any work); the model loads in that dtype on first use."""

    place = placement(args, capture_mode="full")
    return ExperimentContext(
        model_name=args.model or DEFAULT_MODEL, results_root=args.results, device=place.device, seed=args.seed,
        load_model=model_loader(place.dtype_name),
    )


def run_build(
    args: argparse.Namespace, only: list[str] | None = None, context: ExperimentContext | None = None,
    chapter: bool | None = None,
) -> str:
    """Run the experiments and render the selected artifacts; return the summary text. The chapter's results
    section is rewritten when ``chapter`` (default: when the model is the default model)."""

    registered = list(load_catalog().values())
    verbose = getattr(args, "verbose", False)
    context = context or experiment_context(args)
    chapter = context.model_name == DEFAULT_MODEL if chapter is None else chapter
    report = build(select(only), registered, context, args.out, verbose=verbose, chapter=chapter)
    return summary(report)


def run(args: argparse.Namespace) -> int:
    """List, or build every model of ``--model`` (:func:`model_names`) in turn and print each summary (then write
    the archive when asked)."""
    names = model_names(args.model)
    if args.list:
        print(listing(args.out, names[0]))
        return 0
    if args.archive and not args.archive.name.endswith(ARCHIVE_SUFFIXES):
        raise PvqError(f"--archive {args.archive}: name the archive {' or '.join(ARCHIVE_SUFFIXES)}")
    if len(names) > 1:
        check_models(args, names)
    for name in names:
        if len(names) > 1:
            print(f"== {name} ==", flush=True)
        print(run_build(_for_model(args, name), args.only), flush=True)
    if args.archive:

        print(f"archive: {write_archive(args.archive, args.results, args.out)}")
    return 0
