"""The ``pvq`` command line: one registry of subcommands, each a module with ``add_arguments`` and ``run``.

A subcommand module must stay cheap to import (heavy imports such as torch go inside ``run``), so
``pvq --help`` answers at once. Adding a subcommand is one module plus one line in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

COMMANDS: dict[str, str] = {
    "models": "pvq.commands.models",
    "info": "pvq.commands.info",
    "theory": "pvq.commands.theory",
    "bounds": "pvq.commands.bounds",
    "ledger": "pvq.commands.ledger",
    "remove": "pvq.commands.remove",
    "eval": "pvq.commands.evaluate",
    "allocate": "pvq.commands.allocate",
    "figures": "pvq.commands.figures",
    "paper": "pvq.commands.paper",
    "run": "pvq.commands.run",
    "verify": "pvq.commands.verify",
}


def _load(module_name: str) -> ModuleType:
    module = importlib.import_module(module_name)
    for attribute in ("HELP", "add_arguments", "run"):
        if not hasattr(module, attribute):
            raise AttributeError(f"subcommand module {module_name} lacks {attribute}")
    return module


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pvq",
        description="Pruning vs quantization of LLMs: measurements, bounds and figures.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = _load(module_name)
        command_parser = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from theory.errors import PvqError

    try:
        return int(args._run(args) or 0)
    except (PvqError, FileNotFoundError) as error:
        print(f"pvq {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pvq {args.command}: interrupted; finished results are kept, rerun to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
