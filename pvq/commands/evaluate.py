"""`pvq eval`: Perplexity and lm-eval benchmarks of a (compressed) model, in memory.

Example: ``pvq eval --model smollm2-135m --compress SPEC --tasks csqa,mmlu --ppl``. The compressed model is
built in memory (never saved); with ``--compress`` the KL divergence to the uncompressed model is reported
too. Results are cached under ``--out`` by their cache key (:mod:`measure.records.cache_key`: configuration,
calibration protocol, weights, code, data files, environment); the tidy table ``<out>/eval.parquet`` is
rewritten from the cache after every run, and this run's summary rows are printed.

``--device cuda`` with more than one GPU visible loads the model with accelerate's ``device_map="auto"`` (its
blocks spread over the GPUs); with ``--compress`` the model stays on one device (the compression moves one
block at a time to ``--device``). ``--dtype`` other than float32 gets results keyed apart (model hash
``…+<dtype>``).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
from pathlib import Path
from typing import Any

from measure.evaluation.request import EvaluationRequest, run_evaluation
from measure.mixture.file import allocation_spec, check_allocation, is_allocation_file, read_allocation
from measure.models.defaults import DEFAULT_MODEL
from pvq.commands.common import add_device_arguments, placement

HELP = "Perplexity and lm-eval benchmarks of a (compressed) model, in memory."


def add_arguments(parser: argparse.ArgumentParser) -> None:
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


def compression(text: str | None) -> dict[str, Any]:
    """The request fields of ``--compress``: a spec as given, or an allocation file's per-layer terms (parsed
    before the model loads) named ``allocation:<file name>:<sha256 of its spec>`` and checked against the model."""
    if text is None or not is_allocation_file(text):
        return {"spec": text}
    allocation = read_allocation(text)
    spec = allocation_spec(allocation)
    name = f"allocation:{Path(text).name}:{hashlib.sha256(spec.text.encode()).hexdigest()[:12]}"
    check = functools.partial(check_allocation, allocation, spec)
    return {"spec": spec.text, "spec_name": name, "model_check": check}


def run(args: argparse.Namespace) -> int:
    place = placement(args, capture_mode="full")
    request = EvaluationRequest(
        model=args.model, out=Path(args.out), **compression(args.compress),
        tasks=tuple(name.strip() for name in args.tasks.split(",") if name.strip()), ppl=args.ppl,
        window=args.window, stride=args.stride, max_windows=args.max_windows, limit=args.limit,
        batch_size=args.batch_size, device=place.device, dtype=place.dtype_name,
    )
    report = run_evaluation(request)
    print(f"{report.model_id} (hash {report.model_hash}), spec {report.spec}")
    print(report.summary.to_string(index=False))
    print(f"table: {report.table}")
    return 0
