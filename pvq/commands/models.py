"""`pvq models`: list the embedded default models, where they are cached and the size they are stored at."""

from __future__ import annotations

import argparse

from measure.models.defaults import DEFAULT_MODEL, DEFAULT_MODELS
from measure.models.fetch import cache_root
from measure.models.load import conversion_directory, ensure_default_checkpoint
from measure.models.stored_size import stored_bits_per_parameter

HELP = "List the embedded default models and where they are cached."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fetch", metavar="NAME", help="fetch and convert this default model now")


def run(args: argparse.Namespace) -> int:
    if args.fetch:

        print(f"{args.fetch}: {ensure_default_checkpoint(args.fetch)}")
        return 0
    print(f"cache: {cache_root()}  (set PVQ_CACHE to move it)")
    for name, model in DEFAULT_MODELS.items():
        directory = conversion_directory(name, model.asset.sha256)
        cached = (directory / "pvq_source.json").exists()
        state = f"cached at {directory}" if cached else "not fetched yet (fetched on first use)"
        marker = " (default)" if name == DEFAULT_MODEL else ""
        stored = (
            f"stored as {stored_bits_per_parameter(name).describe()}" if model.asset.path.exists()
            else "stored size read from the GGUF once fetched"
        )
        print(f"{name}{marker}: {model.description}; {model.architecture}, {model.num_blocks} blocks; {state}; "
              f"{stored}")  # fmt: skip
    return 0
