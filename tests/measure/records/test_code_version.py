"""Experiment code versions come from the import closure: a change anywhere the function reaches reruns it."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from measure.records import code_version as versions

ROOT = Path(__file__).resolve().parents[3]

TOY_TREE = {
    "toyproj/__init__.py": "",
    "toyproj/low.py": "SCALE = 2\n",
    "toyproj/mid.py": "from toyproj.low import SCALE\n\n\ndef helper(x):\n    return SCALE * x\n",
    "toyproj/unrelated.py": "VALUE = 1\n",
    "toyproj/top.py": textwrap.dedent(
        """
        from toyproj import unrelated
        from toyproj.mid import helper


        def caption():
            return unrelated.VALUE


        def _local(x):
            return helper(x) + 1


        def compute(config, context):
            return _local(config)
        """
    ),
}


def write_tree(root: Path) -> None:
    for name, source in TOY_TREE.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(source)


def version_of_toy(root: Path) -> str:
    for name in [module for module in sys.modules if module.startswith("toyproj")]:
        del sys.modules[name]
    importlib.invalidate_caches()
    return versions.code_version_of(importlib.import_module("toyproj.top").compute)


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_tree(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(versions, "PROJECT_PACKAGES", ("toyproj",))
    yield tmp_path
    for name in [module for module in sys.modules if module.startswith("toyproj")]:
        del sys.modules[name]


def test_an_edit_two_imports_away_changes_the_version(toy: Path) -> None:
    before = version_of_toy(toy)
    (toy / "toyproj/low.py").write_text("SCALE = 3\n")
    assert version_of_toy(toy) != before


def test_edits_the_function_does_not_reach_keep_the_version(toy: Path) -> None:
    before = version_of_toy(toy)
    (toy / "toyproj/unrelated.py").write_text("VALUE = 2\n")
    top = (toy / "toyproj/top.py").read_text()
    (toy / "toyproj/top.py").write_text(top.replace("return unrelated.VALUE", "return unrelated.VALUE + 1"))
    assert version_of_toy(toy) == before


def test_a_local_helper_the_function_calls_is_part_of_the_version(toy: Path) -> None:
    before = version_of_toy(toy)
    top = (toy / "toyproj/top.py").read_text()
    (toy / "toyproj/top.py").write_text(top.replace("helper(x) + 1", "helper(x) + 2"))
    assert version_of_toy(toy) != before


def test_the_closure_lists_the_modules_reached_and_not_the_others(toy: Path) -> None:
    version_of_toy(toy)
    modules = versions.code_modules(importlib.import_module("toyproj.top").compute)
    assert modules == ["toyproj", "toyproj.low", "toyproj.mid"]


PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
from figures.experiments import EXPERIMENTS, code_version
from figures.registry import load_catalog
load_catalog()
names = sys.argv[2:] or sorted(EXPERIMENTS)
print(" ".join(code_version(EXPERIMENTS[name]) for name in names))
"""


def probe(tree: Path, names: tuple[str, ...] = ("layer_bounds_sweep", "theory_formats_gaussian"),
          hash_seed: str = "0") -> list[str]:
    environment = {**os.environ, "PYTHONHASHSEED": hash_seed}
    result = subprocess.run([sys.executable, "-c", PROBE, str(tree), *names], capture_output=True, text=True,
                            check=True, cwd=tree, env=environment)  # fmt: skip
    return result.stdout.split()


def test_every_experiment_has_the_same_code_version_in_every_process() -> None:
    """Set and dict orders change with the string-hash seed; the version must not (else a warm run recomputes)."""
    assert probe(ROOT, (), hash_seed="1") == probe(ROOT, (), hash_seed="2")


def test_editing_a_module_the_bounds_sweep_reaches_only_transitively_invalidates_it(tmp_path: Path) -> None:
    for package in ("theory", "measure", "figures"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    catalog = (tmp_path / "figures/catalog/bounds.py").read_text()
    assert "measure.capture.gram" not in catalog and "import gram" not in catalog
    sweep, theory = probe(tmp_path)
    gram = tmp_path / "measure/capture/gram.py"
    gram.write_text(gram.read_text() + "\n# an edit\n")
    after_sweep, after_theory = probe(tmp_path)
    assert after_sweep != sweep
    assert after_theory == theory
