"""The package's layer order, checked on every module's imports (module level and inside functions).

Data flows capture → ledger → bounds → study tables → figures, and imports run only downward:
theory ← measure (records ← models ← data ← capture ← compress ← evaluation ← ledger, bounds ← removal study,
mixture ← studies) ← figures (everything else ← catalog ← build) ← pvq (scale-out ← commands ← cli). Only the CLI
imports a module by name (the chosen subcommand), and the figure registry discovers the catalog above it by name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("theory", "measure", "figures", "pvq")
LAYERS: tuple[tuple[str, ...], ...] = (
    ("theory",),
    ("measure", "measure.records"),
    ("measure.models",),
    ("measure.data",),
    ("measure.capture",),
    ("measure.compress",),
    ("measure.evaluation",),
    ("measure.ledger", "measure.bounds"),
    ("measure.removal", "measure.mixture"),
    ("measure.studies",),
    ("figures",),
    ("figures.catalog",),
    ("figures.build",),
    ("pvq", "pvq.scale"),
    ("pvq.commands",),
    ("pvq.cli",),
)
"""Bottom first; a module may import its own layer and the layers below it."""


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of the longest prefix of ``module`` (package or module name)."""
    best = (-1, -1)
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                best = max(best, (len(prefix), index))
    if best[1] < 0:
        raise AssertionError(f"{module} belongs to no layer; add it to LAYERS")
    return best[1]


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path
    return modules


def imports_of(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import of a project module in ``path``."""
    tree = ast.parse(path.read_text())
    in_function = {
        id(node) for function in ast.walk(tree) if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(function)
    }
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        found += [(name, node.lineno, id(node) in in_function) for name in names if name.split(".")[0] in PACKAGES]
    return found


MODULES = project_modules()


def test_every_module_belongs_to_a_layer() -> None:
    for name in MODULES:
        layer_of(name)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers_and_none_hides_in_a_function(module: str) -> None:
    here = layer_of(module)
    for imported, line, in_function in imports_of(MODULES[module]):
        where = f"{MODULES[module].relative_to(ROOT)}:{line} imports {imported}"
        assert not in_function, f"{where} inside a function; import at module level"
        higher = f"{where}, a higher layer ({LAYERS[layer_of(imported)]} above {LAYERS[here]})"
        assert layer_of(imported) <= here, higher


def test_the_layer_check_catches_an_upward_and_a_hidden_import(tmp_path: Path) -> None:
    upward = tmp_path / "upward.py"
    upward.write_text("from figures.registry import ARTIFACTS\n\n\ndef f():\n    from pvq.cli import main\n")
    found = imports_of(upward)
    assert found == [("figures.registry", 1, False), ("pvq.cli", 5, True)]
    assert layer_of("figures.registry") > layer_of("measure.ledger")
    assert layer_of("measure.capture.gram") < layer_of("measure.compress.spec") < layer_of("measure.removal.study")


def test_only_the_cli_and_the_catalog_discovery_import_by_name() -> None:
    by_name = sorted(
        str(path.relative_to(ROOT)) for path in MODULES.values() if "import_module(" in path.read_text()
    )
    assert by_name == ["figures/registry.py", "pvq/cli.py"]


def test_measure_has_no_loose_modules_but_the_stages() -> None:
    loose = sorted(path.name for path in (ROOT / "measure").glob("*.py"))
    assert loose == ["__init__.py", "bounds.py", "ledger.py"]


CATALOG_FORBIDDEN_IMPORTS = ("measure.capture", "measure.compress.methods", "measure.compress.apply",
                             "measure.evaluation.residual", "measure.evaluation.lmeval", "measure.mixture.inputs",
                             "measure.mixture.solve")  # fmt: skip
"""What a catalog module never imports: compression methods, capture, evaluation and allocation (the experiments
compute in :mod:`measure.studies` and the other study packages; the catalog declares them)."""
CATALOG_FORBIDDEN_CALLS = frozenset({"capture", "evaluate", "evaluate_perplexity", "evaluate_task", "apply_spec",
                                     "compress", "measure_menu", "allocate", "weights_installed"})  # fmt: skip
"""Names of capture, evaluation, compression and allocation functions no catalog module calls."""


def research_in(path: Path) -> list[str]:
    """Forbidden imports (:data:`CATALOG_FORBIDDEN_IMPORTS`) and calls (:data:`CATALOG_FORBIDDEN_CALLS`, by
    function or attribute name) of the module at ``path``, as "line: what" strings."""
    found = [f"{line}: imports {name}" for name, line, _ in imports_of(path)
             if any(name == banned or name.startswith(banned + ".") for banned in CATALOG_FORBIDDEN_IMPORTS)]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name in CATALOG_FORBIDDEN_CALLS:
                found.append(f"{node.lineno}: calls {name}")
    return found


@pytest.mark.parametrize("module", sorted(name for name in MODULES if name.startswith("figures.catalog")))
def test_catalog_modules_declare_experiments_and_compute_nothing(module: str) -> None:
    assert research_in(MODULES[module]) == [], f"{MODULES[module].relative_to(ROOT)} computes; move it to measure/"


def test_the_catalog_check_catches_a_method_import_and_an_evaluation_call(tmp_path: Path) -> None:
    offender = tmp_path / "offender.py"
    offender.write_text("from measure.compress.methods.uniform import rtn\n"
                        "from measure.studies import frontier\n\n\n"
                        "def f(evaluator, model):\n"
                        "    evaluator.evaluate(start=0)\n"
                        "    return capture(model, [])\n")
    assert research_in(offender) == ["1: imports measure.compress.methods.uniform", "6: calls evaluate",
                                     "7: calls capture"]  # fmt: skip
