"""`pvq eval`: Perplexity and lm-eval benchmarks of a (compressed) model, in memory.

Example: ``pvq eval --model smollm2-135m --compress SPEC --tasks csqa,mmlu --ppl``. The compressed model is
built in memory (never saved); with ``--compress`` the KL divergence to the uncompressed model is reported
too. Results are cached by (model hash, spec, task, protocol) under ``--out``; the tidy table
``<out>/eval.parquet`` is rewritten from the cache after every run, and this run's summary rows are printed.

``--device cuda`` with more than one GPU visible loads the model with accelerate's ``device_map="auto"`` (its
blocks spread over the GPUs); with ``--compress`` the model stays on one device (the compression moves one
block at a time to ``--device``). ``--dtype`` other than float32 gets results keyed apart (model hash
``…+<dtype>``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from pvq.commands.common import Placement, add_device_arguments
from theory.errors import PvqError

HELP = "Perplexity and lm-eval benchmarks of a (compressed) model, in memory."
SUMMARY_COLUMNS = ["task", "metric", "value", "stderr", "n", "limit", "runtime_s", "cached"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from measure.models.defaults import DEFAULT_MODEL

    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"name, folder or .gguf (default {DEFAULT_MODEL})")
    parser.add_argument(
        "--compress", metavar="SPEC",
        help="compression spec, or an allocation file (.parquet/.csv of `pvq allocate`), applied in memory",
    )  # fmt: skip
    parser.add_argument("--tasks", default="", help="comma-separated, e.g. csqa,mmlu (or lm_eval:<stock task>)")
    parser.add_argument("--ppl", action="store_true", help="perplexity, cross-entropy, KL on the evaluation text")
    parser.add_argument("--window", type=int, help="perplexity window length L (default 512 on CPU, 2048 on GPU)")
    parser.add_argument("--stride", type=int, help="sliding-window stride (default: non-overlapping windows)")
    parser.add_argument("--max-windows", type=int, help="score only the first N windows (recorded)")
    parser.add_argument("--limit", type=int, help="questions per task (per MMLU subject), recorded")
    parser.add_argument("--batch-size", type=int, default=4, help="windows / lm-eval requests per forward pass")
    add_device_arguments(parser)
    parser.add_argument("--out", default="results/eval", help="results folder (default results/eval)")


def parse_compression(text: str | None) -> Any:
    """The parsed compression spec (of an allocation file's per-layer terms when ``text`` names one, checked
    before the model loads), or None without ``--compress``."""
    if text is None:
        return None
    from measure.mixture.file import allocation_spec, is_allocation_file, read_allocation

    if is_allocation_file(text):
        return allocation_spec(read_allocation(text))
    try:
        from measure.compress.spec import parse_spec
    except ImportError as error:
        raise PvqError("compression specs are not available yet (no measure.compress.spec); drop --compress") from error
    return parse_spec(text)


def run(args: argparse.Namespace) -> int:
    from pvq.commands.common import placement
    from measure.evaluation.lmeval import TASKS, check_limit, resolve_tasks

    place = placement(args, mode="full")
    names = [name for name in args.tasks.split(",") if name.strip()]
    requests = resolve_tasks(names) if names else []
    if not requests and not args.ppl:
        raise PvqError(f"nothing to evaluate: give --ppl and/or --tasks (valid tasks: {', '.join(TASKS)})")
    check_limit(args.limit)
    spec = parse_compression(args.compress)
    if not any(request.stock for request in requests):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    return _evaluate(args, requests, spec, place)


def _evaluate(args: argparse.Namespace, requests: list[Any], spec: Any, place: Placement) -> int:
    """Load (spread over every GPU when more than one is visible and nothing is compressed), evaluate, print."""
    import pandas as pd

    from pvq.commands.common import device_map_for
    from measure.evaluation.lmeval import check_stock_tasks
    from measure.evaluation.perplexity import bos_token_id_for, check_window_fits, default_window, make_windows
    from measure.evaluation.results import ResultCache
    from measure.evaluation.runs import ModelVariant, cached_perplexity, cached_task
    from measure.models.load import load_model
    from measure.data.text import evaluation_text

    check_stock_tasks(requests)
    device_map = device_map_for(place.device) if spec is None else None
    loaded = load_model(args.model, device=place.device, dtype=place.dtype, device_map=device_map)
    variant = ModelVariant(loaded)
    if spec is not None:
        variant = ModelVariant(loaded, _spec_name(args.compress, spec, loaded.model),
                               _compressor(loaded, spec, place.device))  # fmt: skip
    cache = ResultCache(args.out)
    summary = []
    if args.ppl:
        window = args.window or default_window(place.device)
        check_window_fits(loaded.model, window)
        bos = bos_token_id_for(loaded.tokenizer, loaded.bos_per_window)
        windows = make_windows(evaluation_text(), loaded.tokenizer, window, args.stride, bos, args.max_windows)
        rows, cached = cached_perplexity(cache, variant, windows, args.batch_size)
        summary += [{**row, "cached": cached} for row in rows]
    for request in requests:
        rows, cached = cached_task(cache, variant, request, args.limit, args.batch_size)
        summary += [{**row, "cached": cached} for row in rows if not row["subtask"]]
    table = cache.write_table()
    print(f"{loaded.model_id} (hash {loaded.model_hash}), spec {variant.spec}")
    frame = pd.DataFrame(summary, columns=SUMMARY_COLUMNS).astype({"stderr": float})
    print(frame.to_string(index=False))
    print(f"table: {table}")
    return 0


def _spec_name(text: str, spec: Any, model: Any) -> str:
    """The spec's name in results: the spec itself, or ``allocation:<file name>:<sha256 of its spec>`` for an
    allocation file (checked against ``model`` first: its layers, sizes and bits)."""
    import hashlib

    from measure.mixture.file import check_allocation, is_allocation_file, read_allocation

    if not is_allocation_file(text):
        return text
    check_allocation(read_allocation(text), spec, model)
    return f"allocation:{Path(text).name}:{hashlib.sha256(spec.text.encode()).hexdigest()[:12]}"


def _compressor(loaded: Any, spec: Any, device: str) -> Any:
    """``model -> compressed model`` for ``spec``: compressed in place, one block at a time on ``device``,
    calibrated on the calibration text with the default :class:`measure.data.calibration.CalibrationProtocol`
    (128 windows of 512 tokens)."""
    from measure.data.calibration import CalibrationProtocol, calibration_batches
    from measure.compress.spec import apply_spec
    from measure.data.text import calibration_text

    def compress(model: Any) -> Any:
        protocol = CalibrationProtocol(bos=loaded.bos_per_window)
        apply_spec(model, spec, calibration_batches(loaded.tokenizer, calibration_text(), protocol), device=device)
        return model

    return compress
