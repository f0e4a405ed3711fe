"""lm-eval benchmarks of an in-memory model on the local benchmark datasets.

Our tasks are YAMLs in ``tasks/`` (one registry, :data:`TASKS`) that read the ``save_to_disk`` folders of
:func:`measure.data.benchmarks.benchmark_datasets_dir`, so they run offline. A user with internet can name any
stock
lm-eval task as ``lm_eval:<task>``. Every run goes through lm-eval's own API: ``HFLM(pretrained=<model
object>, tokenizer=...)`` and ``simple_evaluate`` with a ``TaskManager`` whose ``include_path`` is our folder
(Gao et al., "A framework for few-shot language model evaluation", lm-evaluation-harness).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from measure.data.benchmarks import benchmark_datasets_dir
from measure.records.cache_key import data_source, note_read
from theory.errors import PvqError

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
TASKS: dict[str, str] = {
    "csqa": "pvq_csqa",
    "mmlu": "pvq_mmlu",
    "csqa_cloze": "pvq_csqa_cloze",
    "mmlu_cloze": "pvq_mmlu_cloze",
    "arc_easy": "pvq_arc_easy",
    "arc_challenge": "pvq_arc_challenge",
    "hellaswag": "pvq_hellaswag",
    "piqa": "pvq_piqa",
    "winogrande": "pvq_winogrande",
}
TASK_FILES_SOURCE = "lm-eval task files"
STOCK_PREFIX = "lm_eval:"
CUSTOM_DATASET_NOTICE = "Custom kwargs can be passed"


def _drop_custom_dataset_notice(record: logging.LogRecord) -> bool:
    """Logging filter: lm-eval repeats a notice about ``custom_dataset`` kwargs for every task (57 for MMLU)."""
    return CUSTOM_DATASET_NOTICE not in record.getMessage()


@dataclass(frozen=True)
class TaskRequest:
    """A task as named by the user (``csqa`` or ``lm_eval:<stock task>``) and its lm-eval name."""

    name: str
    lm_eval_name: str

    @property
    def stock(self) -> bool:
        """True for a stock lm-eval task (needs the Hugging Face hub), False for our offline tasks."""
        return self.name.startswith(STOCK_PREFIX)


def resolve_tasks(names: Iterable[str]) -> list[TaskRequest]:
    """Our task names and ``lm_eval:<task>`` names as requests; anything else is an error listing ours."""
    requests = []
    for raw in names:
        name = raw.strip()
        if name in TASKS:
            requests.append(TaskRequest(name, TASKS[name]))
        elif name.startswith(STOCK_PREFIX) and len(name) > len(STOCK_PREFIX):
            requests.append(TaskRequest(name, name[len(STOCK_PREFIX):]))
        else:
            raise PvqError(
                f"unknown task {name!r}; valid tasks: {', '.join(TASKS)} "
                f"(or, with internet, any stock lm-eval task as {STOCK_PREFIX}<task>)"
            )
    if not requests:
        raise PvqError(f"no task named; valid tasks: {', '.join(TASKS)}")
    return requests


def check_limit(limit: int | None) -> None:
    """Raise unless ``limit`` is None (all questions) or a positive number of questions per task."""
    if limit is not None and limit < 1:
        raise PvqError(f"--limit must be a positive number of questions per task, got {limit}")


def task_manager(stock: bool, datasets_dir: Path) -> Any:
    """lm-eval TaskManager over our task folder (plus lm-eval's own tasks when ``stock``).

    Indexing lm-eval's ~15,000 stock tasks takes seconds, so it happens only when a stock task is asked for.
    The datasets folder reaches ``utils.load_local_dataset`` through the task metadata.
    """
    from lm_eval.tasks import TaskManager

    return TaskManager(
        include_path=str(TASKS_DIR), include_defaults=stock, metadata={"pvq_datasets_dir": str(datasets_dir)}
    )


def check_stock_tasks(requests: Iterable[TaskRequest]) -> None:
    """Raise unless every stock request names a task or group that lm-eval knows."""
    stock = [request for request in requests if request.stock]
    if not stock:
        return
    from lm_eval.tasks import TaskManager

    known = set(TaskManager(include_defaults=True).all_tasks)
    for request in stock:
        if request.lm_eval_name not in known:
            raise PvqError(
                f"lm-eval has no task {request.lm_eval_name!r}; run `lm-eval ls tasks` for the stock names, "
                f"or use one of ours: {', '.join(TASKS)}"
            )


def task_config_sha256() -> str:
    """Digest of our task YAMLs and their utils.py: a changed prompt or split is a new protocol (and the
    digest of the data source :data:`TASK_FILES_SOURCE`)."""
    digest = hashlib.sha256()
    for path in [*sorted(TASKS_DIR.glob("*.yaml")), TASKS_DIR / "utils.py"]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


data_source(TASK_FILES_SOURCE, task_config_sha256)


def declared_fewshot(request: TaskRequest) -> int | None:
    """The ``num_fewshot`` our YAML declares for the task (0 when absent); None for stock tasks."""
    if request.stock:
        return None
    from lm_eval.tasks._yaml_loader import load_yaml

    return int(load_yaml(TASKS_DIR / f"{request.name}.yaml", resolve_func=False).get("num_fewshot") or 0)


def task_protocol(request: TaskRequest, limit: int | None, add_bos: bool) -> dict[str, Any]:
    """What fixes a task's result besides the model: the task definition (digest of all our task files, so
    any prompt change is a new protocol), shots, limit per (sub)task, BOS policy and lm-eval version."""
    return {
        "lm_eval_task": request.lm_eval_name,
        "task_config": "stock" if request.stock else task_config_sha256(),
        "num_fewshot": declared_fewshot(request),
        "lm_eval": importlib.metadata.version("lm_eval"),
        "limit": limit,
        "add_bos_token": add_bos,
    }


def run_lm_eval(
    model: Any,
    tokenizer: Any,
    request: TaskRequest,
    limit: int | None = None,
    batch_size: int = 8,
    add_bos: bool = False,
    datasets_dir: Path | None = None,
    log_samples: bool = False,
) -> dict[str, Any]:
    """lm-eval's ``simple_evaluate`` output for one task (or group) on the in-memory ``model``.

    ``limit`` caps the questions of each lm-eval task (of each subject for MMLU); ``add_bos`` is the model's
    BOS policy, applied to every request (True for Gemma); ``log_samples`` keeps every prompt and
    log-likelihood under ``output["samples"]``.
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    check_limit(limit)
    if not request.stock:
        note_read(TASK_FILES_SOURCE)
    if datasets_dir is None:
        datasets_dir = benchmark_datasets_dir()
    task_logger = logging.getLogger("lm_eval.api.task")
    if _drop_custom_dataset_notice not in task_logger.filters:
        task_logger.addFilter(_drop_custom_dataset_notice)
    language_model = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, add_bos_token=add_bos)
    return simple_evaluate(
        model=language_model,
        tasks=[request.lm_eval_name],
        limit=limit,
        task_manager=task_manager(request.stock, datasets_dir),
        log_samples=log_samples,
    )


def evaluate_task(model: Any, tokenizer: Any, request: TaskRequest, **options: Any) -> list[dict[str, Any]]:
    """Tidy metric rows (:func:`metric_rows`) of one task; ``options`` as for :func:`run_lm_eval`."""
    return metric_rows(run_lm_eval(model, tokenizer, request, **options))


def _metrics_of(entry: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """``{metric: (value, stderr)}`` from one lm-eval results entry (keys ``metric,filter``)."""
    metrics = {}
    for key, value in entry.items():
        if "," not in key or "_stderr," in key:
            continue
        metric, filter_name = key.split(",", 1)
        name = metric if filter_name == "none" else f"{metric}[{filter_name}]"
        stderr = entry.get(f"{metric}_stderr,{filter_name}")
        metrics[name] = (_number(value), _number(stderr))
    return metrics


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan


def metric_rows(output: dict[str, Any]) -> list[dict[str, Any]]:
    """Tidy rows ``{subtask, metric, value, stderr, n, num_fewshot}`` from one ``simple_evaluate`` output.

    A single task gives its metrics with ``subtask = ""``. A group (MMLU) gives one row per subtask and metric,
    plus, with ``subtask = ""``, the macro average (mean over subtasks, stderr √(Σ se_i²)/k) and the micro
    average (Σ n_i v_i / Σ n_i, stderr √(Σ n_i² se_i²)/Σ n_i) of every metric, as ``<metric>_macro`` and
    ``<metric>_micro``.
    """
    samples = output["n-samples"]
    shots = output.get("n-shot", {})
    leaves = [
        {"subtask": name.split("::")[-1], "n": samples[name]["effective"], "num_fewshot": shots.get(name),
         "metrics": _metrics_of(output["results"][name])}
        for name in sorted(samples)
    ]
    if len(leaves) == 1:
        leaf = leaves[0]
        return [
            {"subtask": "", "metric": metric, "value": value, "stderr": stderr, "n": leaf["n"],
             "num_fewshot": leaf["num_fewshot"]}
            for metric, (value, stderr) in sorted(leaf["metrics"].items())
        ]
    rows = [
        {"subtask": leaf["subtask"], "metric": metric, "value": value, "stderr": stderr, "n": leaf["n"],
         "num_fewshot": leaf["num_fewshot"]}
        for leaf in leaves
        for metric, (value, stderr) in sorted(leaf["metrics"].items())
    ]
    return rows + group_averages(rows)


def group_averages(subtask_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Macro and micro averages over subtasks of every metric (formulas in :func:`metric_rows`)."""
    averages = []
    for metric in sorted({row["metric"] for row in subtask_rows}):
        rows = [row for row in subtask_rows if row["metric"] == metric]
        k, total = len(rows), sum(row["n"] for row in rows)
        fewshot = {row["num_fewshot"] for row in rows}
        common = {"subtask": "", "n": total, "num_fewshot": fewshot.pop() if len(fewshot) == 1 else None}
        averages.append({
            **common, "metric": f"{metric}_macro",
            "value": sum(row["value"] for row in rows) / k,
            "stderr": math.sqrt(sum(row["stderr"] ** 2 for row in rows)) / k,
        })
        averages.append({
            **common, "metric": f"{metric}_micro",
            "value": sum(row["n"] * row["value"] for row in rows) / total,
            "stderr": math.sqrt(sum((row["n"] * row["stderr"]) ** 2 for row in rows)) / total,
        })
    return averages
