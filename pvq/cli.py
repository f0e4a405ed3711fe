"""The ``pvq`` command line: one registry of subcommands, each a module with ``HELP``, ``add_arguments`` and
``run``.

Adding a subcommand is one module plus one line in ``COMMANDS``. Only the chosen subcommand's module is imported
(the one import made inside a function anywhere in the package, and it points down the layers); the others are
listed by the ``HELP`` read from their source, so ``pvq --help`` answers without importing torch.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from types import ModuleType

from theory.errors import PvqError

COMMANDS: dict[str, str] = {
    "models": "pvq.commands.models",
    "info": "pvq.commands.info",
    "theory": "pvq.commands.theory",
    "bounds": "pvq.commands.bounds",
    "ledger": "pvq.commands.ledger",
    "remove": "pvq.commands.remove",
    "eval": "pvq.commands.evaluate",
    "allocate": "pvq.commands.allocate",
    "shrink": "pvq.commands.shrink",
    "figures": "pvq.commands.figures",
    "paper": "pvq.commands.paper",
    "run": "pvq.commands.run",
    "verify": "pvq.commands.verify",
}


def command_help(module_name: str) -> str:
    """The ``HELP`` string of a subcommand module, read from its source without importing it."""
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        raise ImportError(f"subcommand module {module_name} is missing")
    for node in ast.parse(Path(spec.origin).read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(target, "id", None) == "HELP" for target in node.targets):
            return str(ast.literal_eval(node.value))
    raise AttributeError(f"subcommand module {module_name} lacks HELP")


def _load(module_name: str) -> ModuleType:
    module = importlib.import_module(module_name)
    for attribute in ("HELP", "add_arguments", "run"):
        if not hasattr(module, attribute):
            raise AttributeError(f"subcommand module {module_name} lacks {attribute}")
    return module


def build_parser(commands: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The ``pvq`` parser; the modules of ``commands`` (all when None) are imported and declare their arguments,
    the others are listed by their help alone (``pvq --help`` and ``pvq eval ...`` import only what they use)."""
    parser = argparse.ArgumentParser(
        prog="pvq",
        description="Pruning vs quantization of LLMs: measurements, bounds and figures.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        help_text = command_help(module_name)
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if commands is None or name in commands:
            module = _load(module_name)
            module.add_arguments(command_parser)
            command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

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
