"""Model tables: what the default model is, and what each compression configuration costs and keeps.

Also the one place that fixes the data protocol of every model experiment of the catalog (calibration windows,
evaluation windows, calibration mode), so that removal, frontier and benchmark numbers are measured on the same
tokens: :data:`CALIBRATION`, :data:`EVALUATION`, :func:`calibration` and :func:`evaluation_windows`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from pandas.io.formats.style import Styler

from figures.answers import prose
from figures.experiments import ExperimentContext, experiment
from figures.labels import spec_label
from figures.registry import Tables, escape_tex, table
from figures.style import thesis_table
from measure.compress.spec import check_spec_for_model
from measure.data.calibration import CalibrationProtocol
from measure.evaluation.perplexity import INTERVAL_COLUMNS
from measure.evaluation.protocols import (
    FIGURES_CALIBRATION,
    FIGURES_EVALUATION,
    EvaluationProtocol,
    model_calibration,
)
from measure.studies.benchmarks import BITS_PER_MB, benchmark_table
from measure.studies.layers import parameter_summary
from theory.accounting import BASE_BITS

SECTION = "The models"
SUMMARY = "model_summary"
BENCHMARKS = "compression_benchmarks"
CALIBRATION = {"sequences": FIGURES_CALIBRATION.sequences, "sequence_length": FIGURES_CALIBRATION.sequence_length,
               "batch_size": FIGURES_CALIBRATION.batch_size, "mode": "parallel"}  # fmt: skip
"""Calibration of every model experiment (:data:`measure.evaluation.protocols.FIGURES_CALIBRATION`: the first 8
windows of 512 tokens of the calibration text, 4096 tokens), compression calibrated on the original model's stream
(``calibration="parallel"`` of :func:`measure.studies.inputs.original_capture`)."""
EVALUATION = {"window": FIGURES_EVALUATION.window, "max_windows": FIGURES_EVALUATION.max_windows}
"""Perplexity / KL protocol of every model experiment (:data:`measure.evaluation.protocols.FIGURES_EVALUATION`:
the first 8 non-overlapping windows of 512 tokens of the held-out evaluation text, 4088 scored tokens without
BOS). Every variant of every experiment is scored on these
same tokens, so every comparison is paired, and every number carries a 95 % block-bootstrap interval
(:mod:`measure.evaluation.intervals`; the half-widths these tokens give for the headline differences are in the
tables' ``*_ci_*`` columns and in the README's answer). ``pvq eval`` runs the full pinned protocol (every window of
the text) and ``pvq remove --study`` its own larger one."""
BENCHMARK_VARIANTS = ("", "gptq:4:g128", "remove:bi:4")
BENCHMARK_TASKS = {"csqa": 20}
"""lm-eval task -> --limit. MMLU is 5-shot (about 600 tokens a question): at --limit 1 per subject it costs
57 questions per variant, over the budget; add ``"mmlu": 1`` here to include it (the table shows a column)."""


def check_specs(loaded: Any, specs: Sequence[str]) -> None:
    """Every non-empty spec of ``specs`` checked against the loaded model from its config and module structure
    (:func:`measure.compress.spec.check_spec_for_model`), so that a spec the model cannot take fails before the
    calibration batches are read."""
    for spec in specs:
        if spec:
            check_spec_for_model(spec, loaded.model)


def spec_check(key: str) -> Callable[[Mapping[str, Any], ExperimentContext], None]:
    """An experiment's settings check (``check`` of :func:`figures.experiments.experiment`): the specs under
    ``config[key]`` against the context's model (:func:`check_specs`)."""
    return lambda config, context: check_specs(context.model, config[key])


def calibration(loaded: Any, config: Mapping[str, Any]) -> list:
    """The calibration batches of ``config`` (:data:`CALIBRATION`) for a loaded model (with its BOS policy)."""

    protocol = CalibrationProtocol(config["sequences"], config["sequence_length"], config["batch_size"])
    return model_calibration(loaded, protocol)[0]


def evaluation_windows(loaded: Any, config: Mapping[str, Any]) -> Any:
    """The pinned evaluation windows of ``config`` (:data:`EVALUATION`) on the held-out evaluation text
    (:meth:`measure.evaluation.protocols.EvaluationProtocol.windows`)."""

    return EvaluationProtocol(config["window"], config["max_windows"]).windows(loaded)


def describe_protocol(config: Mapping[str, Any]) -> str:
    """Caption text for the calibration and evaluation protocol of an experiment config."""
    cal, ev = config["calibration"], config["evaluation"]
    return (
        f"calibration {cal['sequences']}$\\times${cal['sequence_length']} tokens ({escape_tex(cal['mode'])}), "
        f"evaluation {ev['max_windows']}$\\times${ev['window']} held-out tokens"
    )


def synthetic_summary(rng: np.random.Generator) -> pd.DataFrame:
    """A small stand-in for :func:`model_summary` (same columns, made-up counts)."""
    blocks = 4
    parts = {"embeddings": 28e6, "attention": blocks * 1.3e6, "mlp": blocks * 2.6e6, "norms": blocks * 1152.0,
             "final_norm": 576.0, "lm_head": 0.0}
    total = sum(parts.values())
    rows = [(part, int(count), 100 * count / total) for part, count in parts.items()]
    frame = pd.DataFrame([*rows, ("total", int(total), 100.0)], columns=["part", "parameters", "share_pct"])
    return frame.assign(blocks=blocks, linear_layers=7 * blocks, hidden_size=576)


@experiment(SUMMARY, config={}, synthetic=synthetic_summary, needs_model=True)
def model_summary(config: Mapping[str, Any], context: ExperimentContext) -> pd.DataFrame:
    """Parameters by part (:func:`measure.studies.layers.parameter_summary`: embeddings, attention, MLP, norms,
    final norm, untied LM head, total), with the number of blocks, block linear layers and the hidden size."""

    return parameter_summary(context.model.model)


def _summary_caption(tables: Tables, facts: Mapping[str, Any]) -> str:
    frame = tables[SUMMARY]
    grid = facts["grid_detection"]
    verdict = grid.get("verdict", grid) if isinstance(grid, Mapping) else grid
    return (
        f"Model {escape_tex(facts['model_id'])} (weights sha256 {escape_tex(facts['model_hash'])}): "
        f"{int(frame['blocks'].iloc[0])} blocks, {int(frame['linear_layers'].iloc[0])} linear layers in them, "
        f"hidden size {int(frame['hidden_size'].iloc[0])}; parameters by part (a tied LM head counts 0). "
        f"Grid detection on the block linear weights: {escape_tex(verdict)}."
    )


@table(SUMMARY, needs=(SUMMARY,), caption=_summary_caption, section=SECTION)
def model_summary_table(tables: Tables) -> Styler:
    """Parameters and share of the total per part of the model."""
    frame = tables[SUMMARY].assign(parameters_m=lambda f: f["parameters"] / 1e6)
    labels = {"part": "Part", "parameters_m": "Parameters [M]", "share_pct": "Share [\\%]"}
    return thesis_table(frame, labels, precision=2)


def synthetic_benchmarks(rng: np.random.Generator) -> pd.DataFrame:
    """A small stand-in for :func:`compression_benchmarks` (same columns, made-up values)."""
    rows = []
    for spec, bits, ppl in (("", 16.0, 20.0), ("gptq:4:g128", 6.1, 23.0), ("remove:bi:4", 14.2, 40.0)):
        for task, limit in (("csqa", 20), ("mmlu", 1)):
            rows.append({
                "spec": spec, "bits_per_model_parameter": bits, "size_mb": bits * 1.35e8 / BITS_PER_MB,
                "perplexity": ppl,
                "kl_to_reference_nats": np.nan if not spec else rng.uniform(0.05, 0.5), "task": task,
                "accuracy": rng.uniform(0.2, 0.4), "accuracy_stderr": 0.05,
                "questions": 20 if task == "csqa" else 57,
                "limit": limit, **dict.fromkeys(INTERVAL_COLUMNS, 0.1), "tokens": 4088,
            })  # fmt: skip
    return pd.DataFrame(rows)


@experiment(
    BENCHMARKS, needs_model=True, synthetic=synthetic_benchmarks, check=spec_check("variants"),
    config={"variants": list(BENCHMARK_VARIANTS), "tasks": BENCHMARK_TASKS, "calibration": CALIBRATION,
            "evaluation": EVALUATION},
)  # fmt: skip
def compression_benchmarks(config: Mapping[str, Any], context: ExperimentContext) -> pd.DataFrame:
    """Per compression spec (``""`` = the original): size, perplexity, KL to the original and lm-eval accuracy
    (``acc``; MMLU: micro average over subjects) of each task at its ``--limit``. One row per (spec, task)
    (:func:`measure.studies.benchmarks.benchmark_table`)."""
    loaded = context.model
    check_specs(loaded, config["variants"])
    return benchmark_table(loaded, config["variants"], calibration(loaded, config["calibration"]),
                           evaluation_windows(loaded, config["evaluation"]), config["tasks"],
                           config["calibration"]["mode"])  # fmt: skip


def _benchmarks_caption(tables: Tables, facts: Mapping[str, Any]) -> str:
    frame = tables[BENCHMARKS]
    limits = frame.drop_duplicates("task")
    tasks = "; ".join(
        f"{escape_tex(row.task)}: lm-eval \\texttt{{--limit {int(row.limit)}}} ({int(row.questions)} questions)"
        for row in limits.itertuples()
    )
    mmlu = "; MMLU 5-shot, micro average over subjects" if "mmlu" in set(limits["task"]) else ""
    return (
        f"Compression configurations of {escape_tex(facts['model_id'])}: size in bits per original parameter "
        "(every parameter at 16 bits except compressed weights; removed blocks cost nothing) and MB, perplexity "
        f"and KL to the original ({describe_protocol(facts['protocol'][BENCHMARKS])}), and accuracy in \\% "
        f"({tasks}{mmlu}) $\\pm$ its binomial standard error (lm-eval's \\texttt{{acc\\_stderr}}). "
        f"{accuracy_differences(frame)}"
    )


def accuracy_differences(frame: pd.DataFrame) -> str:
    """Each compressed variant's accuracy minus the original's per task, called a difference only when it exceeds
    two standard errors of the difference, √(se_a² + se_b²) (independent binomial errors; the same questions make
    the true error smaller, so this is conservative)."""
    original = frame[frame["spec"] == ""].set_index("task")
    parts = []
    for row in frame[frame["spec"] != ""].itertuples():
        if row.task not in original.index:
            continue
        base = original.loc[row.task]
        difference = 100 * (row.accuracy - base["accuracy"])
        error = 100 * math.hypot(row.accuracy_stderr, base["accuracy_stderr"])
        called = ("lower" if difference < 0 else "higher") if abs(difference) > 2 * error else "indistinguishable"
        parts.append(f"{escape_tex(row.spec)} on {escape_tex(row.task)}: {difference:+.1f} points "
                     f"($\\pm${2 * error:.1f} at two standard errors, {called})")  # fmt: skip
    if not parts:
        return ""
    return "Against the original: " + "; ".join(parts) + "."


@table(BENCHMARKS, needs=(BENCHMARKS,), caption=_benchmarks_caption, section=SECTION)
def compression_benchmarks_table(tables: Tables) -> Styler:
    """One row per configuration: bits per model parameter, MB, PPL, KL and one accuracy column per task."""
    frame = tables[BENCHMARKS]
    cells = frame.assign(cell=[f"{100 * a:.1f} ± {100 * e:.1f} (N={int(n)})" for a, e, n in
                               zip(frame["accuracy"], frame["accuracy_stderr"], frame["questions"], strict=True)])
    wide = cells.pivot_table(index="spec", columns="task", values="cell", sort=False, aggfunc="first")
    sizes = frame.drop_duplicates("spec").set_index("spec")
    columns = ["bits_per_model_parameter", "size_mb", "perplexity", "kl_to_reference_nats"]
    merged = sizes[columns].join(wide).reset_index()
    merged["spec"] = merged["spec"].map(spec_label)
    labels = {"spec": "Configuration", "bits_per_model_parameter": "Bits per parameter", "size_mb": "Size [MB]",
              "perplexity": "Perplexity", "kl_to_reference_nats": "KL [nats/token]"}  # fmt: skip
    labels |= {task: f"{'CommonsenseQA' if task == 'csqa' else task.upper()} [\\%]" for task in wide.columns}
    return thesis_table(merged, labels, precision=2)


def parameter_shares(summary: pd.DataFrame) -> dict[str, float]:
    """Share of the model's parameters (%) by part of the ``model_summary`` table."""
    return summary.set_index("part")["share_pct"].to_dict()


@prose(SECTION, needs=(SUMMARY, BENCHMARKS))
def models_prose(tables: Tables) -> str:
    """The section's opening paragraph: the model every later section measures, where its parameters are, and the
    threats to validity that come with one small pre-quantized model and few benchmark questions."""
    summary, benchmarks = tables[SUMMARY], tables[BENCHMARKS]
    shares = parameter_shares(summary)
    total = float(summary.set_index("part").at["total", "parameters"])
    questions = benchmarks.drop_duplicates("task")
    counts = ", ".join(f"{int(row.questions)} ({escape_tex(row.task)})" for row in questions.itertuples())
    linear = shares.get("attention", 0.0) + shares.get("mlp", 0.0)
    return (
        f"Every result that follows is measured on one model: {int(summary['blocks'].iloc[0])} decoder blocks "
        f"holding {int(summary['linear_layers'].iloc[0])} linear layers, hidden size "
        f"{int(summary['hidden_size'].iloc[0])}, {total / 1e6:.1f} M parameters. The attention and MLP sublayers "
        f"of the blocks, whose weights every method compresses, hold {linear:.0f} \\% of them and the embeddings "
        f"{shares.get('embeddings', 0.0):.0f} \\%. Threats to validity: one small model, so no result here is "
        "claimed for larger ones; the default weights were published pre-quantized (their stored size is stated "
        f"with the removal results) and are dequantized before any method runs, so their {BASE_BITS}-bit form is "
        "a hypothetical base; the benchmark accuracies rest on few questions per task "
        f"({counts}), so their standard errors are wide."
    )
