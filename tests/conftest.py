"""Shared test settings: one thread per test process (the machine has 2 cores), offline hub, and the tests that
need the real default models (marked ``slow``) last; the fixtures more than one test folder uses.

This folder is on ``sys.path`` (pytest's default ``prepend`` import mode puts each conftest's and test file's
folder there), so the helper modules beside this file (``tiny_models``, ``tiny_inputs``, ``method_toys``,
``default_shapes``) import by bare name from every test folder. Test folders have no ``__init__.py``: every test
file name is unique across ``tests/``."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import pytest
import torch
from tiny_models import save_tiny_model

torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list) -> None:
    """Move the ``slow`` tests (they fetch the default models from PyPI on first use) after all the others, so a
    failed download cannot come before any other result; the sort is stable, so the order is otherwise kept."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama and the byte tokenizer saved as a model folder named ``llama``, once per module."""
    return save_tiny_model("llama", tmp_path_factory.mktemp("models") / "llama")
