"""The code a cached result was computed by, found from its imports: the function, the helpers of its module it
calls, and the import closure of the project modules those name (theory, measure, figures).

It is the ``code`` field of :class:`measure.records.cache_key.CacheKey`: experiments and derived files (converted
checkpoints, cleaned text) are keyed by :func:`code_version_of` the function that computes them, evaluations by
:func:`modules_version` of the modules that compute them. Modules are read as files, never imported, so measure
code may name the figures package here without importing upward.

An experiment's cache key must change when any code it runs changes and should not change otherwise. The code
it runs is: its function (decorators, comments and layout stripped, so a declaration or a comment edit does not
rerun minutes of work), the module-level definitions of the same module that the function references
(transitively), and every project module those reference by import, with the modules *they* import, and so on.
A module is followed when a referenced name was imported from it (``from measure.ledger import build_ledger``
follows ``measure.ledger``; ``from measure.capture import gram`` follows ``measure.capture.gram``). Modules are
hashed whole: a change anywhere in a reached module reruns the experiment. The layering (imports only at module
level, only downward; ``tests/test_layers.py``) is what makes module-level imports the whole story.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import textwrap
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import Any

from theory.errors import PvqError

PROJECT_PACKAGES = ("theory", "measure", "figures")
"""Packages whose modules key the cache (third-party code is keyed by the package versions of
:func:`measure.records.cache_key.environment`)."""


def function_source(function: Callable[..., Any]) -> str:
    """The code of ``function`` without its decorators, comments or layout (``ast.unparse``).

    Decorators hold the experiment declaration (config, synthetic table), which is keyed separately, so
    editing one experiment's declaration does not invalidate another that shares the function. Source
    that does not parse on its own (a lambda inside a larger expression) is used verbatim.
    """
    try:
        source = textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError) as error:
        raise PvqError(f"experiment function {function!r} has no source file; define it in a module") from error
    try:
        node = ast.parse(source).body[0]
    except SyntaxError:
        return source
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        node.decorator_list = []
    return ast.unparse(node)


def _in_project(module: str) -> bool:
    return module.split(".")[0] in PROJECT_PACKAGES


def module_path(module: str) -> Path | None:
    """The source file of ``module`` (a package's ``__init__.py``), or None when it is not importable."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec is not None and spec.origin and spec.origin.endswith(".py") else None


@cache
def _parsed(path: Path, mtime_ns: int) -> ast.Module:
    return ast.parse(path.read_text())


def parse_module(path: Path) -> ast.Module:
    """The AST of ``path``, cached until the file changes."""
    return _parsed(path, path.stat().st_mtime_ns)


def imported_names(tree: ast.Module) -> dict[str, str]:
    """Local name -> project module it refers to, for every module-level import of ``tree``.

    ``from pkg import name`` maps to ``pkg.name`` when that is a module, else to ``pkg``.
    """
    names: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _in_project(alias.name):
                    names[alias.asname or alias.name.split(".")[0]] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and _in_project(node.module):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                names[alias.asname or alias.name] = submodule if module_path(submodule) else node.module
    return names


def _top_level_definitions(tree: ast.Module) -> dict[str, ast.stmt]:
    definitions: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            definitions[node.name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        definitions[name.id] = node
    return definitions


def _annotations(node: ast.AST) -> set[int]:
    """ids of the nodes inside type annotations (they name types for readers, not code that runs)."""
    roots = []
    for child in ast.walk(node):
        if isinstance(child, ast.arg | ast.AnnAssign) and child.annotation is not None:
            roots.append(child.annotation)
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) and child.returns is not None:
            roots.append(child.returns)
    return {id(inner) for root in roots for inner in ast.walk(root)}


def _referenced(node: ast.AST) -> set[str]:
    """Names ``node`` uses outside type annotations."""
    skip = _annotations(node)
    return {name.id for name in ast.walk(node) if isinstance(name, ast.Name) and id(name) not in skip}


def _plain(node: ast.stmt) -> str:
    """A module-level definition without decorators (they hold declarations, keyed elsewhere)."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.decorator_list:
        node = type(node)(**{**{field: getattr(node, field) for field in node._fields}, "decorator_list": []})
    return ast.unparse(node)


def _function_node(function: Callable[..., Any]) -> ast.AST:
    """The parsed ``function`` without decorators (they are declarations, keyed separately)."""
    node = ast.parse(textwrap.dedent(inspect.getsource(function))).body[0]
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        node.decorator_list = []
    return node


def _followed_by_name(module: str) -> bool:
    """Modules of :mod:`figures` are followed definition by definition (a catalog module holds captions and
    drawing code that no experiment runs); theory and measure modules are hashed whole."""
    return module.split(".")[0] == "figures"


def local_closure(function: Callable[..., Any]) -> tuple[list[str], set[str]]:
    """The sources of the definitions ``function`` reaches in :mod:`figures` modules (its own module first,
    following imports between figures modules name by name), and the theory/measure modules they import."""
    sources, modules = [function_source(function)], set()
    start = (function.__module__, function.__name__)
    pending = [(function.__module__, name) for name in sorted(_referenced(_function_node(function)), reverse=True)]
    seen = {start}
    while pending:
        module, name = pending.pop()
        if (module, name) in seen:
            continue
        seen.add((module, name))
        path = module_path(module)
        if path is None:
            continue
        tree = parse_module(path)
        imports, definitions = imported_names(tree), _top_level_definitions(tree)
        if name in definitions:
            sources.append(f"{module}.{name}:{_plain(definitions[name])}")
            pending += [(module, inner) for inner in sorted(_referenced(definitions[name]), reverse=True)]
        elif name in imports:
            target = imports[name]
            if not _followed_by_name(target) or target.endswith("." + name):
                modules.add(target)
            else:
                pending.append((target, _original_name(tree, name)))
    return sources, modules


def _original_name(tree: ast.Module, local: str) -> str:
    """The name ``local`` had in the module it was imported from (``from m import a as local`` gives ``a``)."""
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == local:
                    return alias.name
    return local


def module_closure(modules: Iterable[str]) -> dict[str, Path]:
    """Every project module reachable from ``modules`` by module-level imports (packages' ``__init__`` included),
    by name."""
    reached: dict[str, Path] = {}
    pending = list(modules)
    while pending:
        module = pending.pop()
        if module in reached or not _in_project(module):
            continue
        path = module_path(module)
        if path is None:
            continue
        reached[module] = path
        parents = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
        pending += parents + list(imported_names(parse_module(path)).values())
    return reached


def code_modules(function: Callable[..., Any]) -> list[str]:
    """The project modules ``function`` runs, by name (recorded in provenance)."""
    return sorted(module_closure(local_closure(function)[1]))


def _closure_digest(prefix: str, modules: Iterable[str]) -> str:
    digest = hashlib.sha256(prefix.encode())
    for module, path in sorted(module_closure(modules).items()):
        digest.update(b"\0" + module.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def code_version_of(function: Callable[..., Any]) -> str:
    """sha256 (16 hex digits) over the local closure of ``function`` and the source of its module closure."""
    sources, modules = local_closure(function)
    return _closure_digest("\0".join([sources[0], *sorted(sources[1:])]), modules)


def modules_version(modules: Iterable[str]) -> str:
    """sha256 (16 hex digits) over the source of every project module reachable from ``modules`` (whole modules:
    the code of an evaluation or of a derived file's producer)."""
    return _closure_digest("", modules)
