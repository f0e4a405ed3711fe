"""Functions the task YAMLs of this folder name with ``!function utils.…`` (lm-eval loads this file by path).

* :func:`load_local_dataset` — the ``custom_dataset`` of every task: the local ``save_to_disk`` folders of
  the benchmark datasets, so no task touches the Hugging Face hub.
* HellaSwag and WinoGrande document processing, following the protocols of lm-eval's stock tasks.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import datasets

_BRACKETED = re.compile(r"\[.*?\]")


def load_local_dataset(path: str, pvq_datasets_dir: str | None = None, **metadata: Any) -> datasets.DatasetDict:
    """Every split saved under ``<datasets dir>/<path>/<split>/`` as one DatasetDict.

    ``pvq_datasets_dir`` comes from the TaskManager metadata set by :mod:`measure.evaluation.lmeval`;
    without it (the YAMLs used directly with ``lm_eval --include_path``) the pvq benchmark folder is used.
    """
    if pvq_datasets_dir is None:
        from measure.data.benchmarks import benchmark_datasets_dir

        pvq_datasets_dir = str(benchmark_datasets_dir())
    root = Path(pvq_datasets_dir) / path
    splits = sorted(child for child in root.iterdir() if (child / "state.json").exists()) if root.is_dir() else []
    if not splits:
        raise FileNotFoundError(f"no dataset splits (save_to_disk folders) under {root}")
    return datasets.DatasetDict({split.name: datasets.load_from_disk(str(split)) for split in splits})


def hellaswag_clean(text: str) -> str:
    """HellaSwag text cleaning: strip, WikiHow ``" [title]"`` markers become sentence breaks, other
    bracketed markers are dropped, double spaces collapse (lm-eval's HellaSwag preprocessing)."""
    text = text.strip().replace(" [title]", ". ")
    return _BRACKETED.sub("", text).replace("  ", " ")


def hellaswag_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """Add ``query`` (activity label: context, second part capitalized), cleaned ``choices`` and ``gold``."""

    def process(doc: dict[str, Any]) -> dict[str, Any]:
        context = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        return {
            "query": hellaswag_clean(doc["activity_label"] + ": " + context),
            "choices": [hellaswag_clean(ending) for ending in doc["endings"]],
            "gold": int(doc["label"]),
        }

    return dataset.map(process)


def winogrande_contexts(doc: dict[str, Any]) -> list[str]:
    """The sentence up to the blank, completed with option 1 and with option 2."""
    blank = doc["sentence"].index("_")
    return [doc["sentence"][:blank] + option for option in (doc["option1"], doc["option2"])]


def winogrande_gold_context(doc: dict[str, Any]) -> int:
    """Index of the correct context (lm-eval's multiple-input form: ``doc_to_text`` returns an index)."""
    return int(doc["answer"]) - 1


def winogrande_continuation(doc: dict[str, Any]) -> str:
    """The shared continuation scored after each context: the sentence after the blank."""
    blank = doc["sentence"].index("_")
    return doc["sentence"][blank + 1:].strip()
