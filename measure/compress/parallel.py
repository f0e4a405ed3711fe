"""Layers shared among forked single-threaded worker processes (one job: :func:`fork_map`).

The column sweeps of GPTQ and SparseGPT are sequences of small products that one core runs no faster with more
threads, so per-layer work is spread over forked workers with one thread each instead. The function and its items
are inherited by the workers copy-on-write (never pickled); only results travel back.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

from theory.errors import PvqError

Item = TypeVar("Item")
Result = TypeVar("Result")

_TASK: dict[str, Any] = {}
"""What forked workers of :func:`fork_map` read."""


def method_workers(workers: int | None) -> int:
    """The number of processes ``workers`` asks for: itself, or one per CPU core for None (PvqError below 1)."""
    count = (os.cpu_count() or 1) if workers is None else workers
    if count < 1:
        raise PvqError(f"workers must be at least 1, got {workers}")
    return count


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the body with ``count`` intra-op threads of torch, then restore the caller's count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _single_thread_worker() -> None:
    torch.set_num_threads(1)


def _call(index: int) -> Any:
    return _TASK["function"](_TASK["items"][index])


def fork_map(
    function: Callable[[Item], Result],
    items: Sequence[Item],
    workers: int | None = 1,
    on_result: Callable[[Result], None] = lambda result: None,
) -> list[Result]:
    """``[function(item) for item in items]`` in order, computed by ``workers`` forked processes (None: one per
    core); ``on_result`` sees each result as it arrives (in order). ``workers=1``, a single item, or a platform
    without ``fork`` runs in this process."""
    count = min(method_workers(workers), len(items))
    if count <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        results = []
        for item in items:
            results.append(function(item))
            on_result(results[-1])
        return results
    _TASK.update(function=function, items=list(items))
    try:
        with multiprocessing.get_context("fork").Pool(count, initializer=_single_thread_worker) as pool:
            results = []
            for result in pool.imap(_call, range(len(items))):
                results.append(result)
                on_result(result)
            return results
    finally:
        _TASK.clear()
