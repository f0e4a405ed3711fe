"""Artifacts that compare models: the key removal results of every model whose ``removal_study`` table exists.

When two or more models have a stored ``results/<model>/removal_study.parquet``, ``pvq figures`` renders into
``<out>/cross-model/`` (:mod:`figures.layout`):

* ``block_importance_by_model`` (figure): Block Influence BI = 1 − E[cos(x_i, x_{i+1})] (ShortGPT, arXiv
  2403.03853, Eq. 1) and the angular distance at n = 1 (Gromov et al., arXiv 2403.17887) of each block against
  its normalized depth ``block / (blocks − 1)`` (0 = first block, 1 = last), one line per model;
* ``removal_answer_by_model`` (table): the thesis answer per model, one row per model and view: the removal of
  the lowest-BI blocks at the level the one-sentence answer speaks of
  (:data:`figures.catalog.removal.ANSWER_LEVEL`, free mask), its dB, the best and worst method at exactly the
  same size b(f) = 16(1 − f) bits per decoder parameter, and the equivalent bits of the quantizer the answer names.

Each model's table is read as stored, with its own protocol; when the protocols differ the caption says so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pandas.io.formats.style import Styler

from figures.catalog.removal import ANSWER_LEVEL, ANSWER_SERIES, STUDY, study_part
from figures.experiments import MODEL_FREE_DIR
from figures.layout import CROSS_MODEL_DIR
from figures.registry import Artifact, Tables, escape_tex
from figures.removal_cells import SERIES_CODES, SERIES_NAMES, VIEW_CODES, equivalent_bits_cell, method_db_cell
from figures.render import render_artifact
from figures.style import MARKERS, OKABE_ITO, new_figure, thesis_table
from measure.records.store import read_provenance, read_table

SECTION = "Across models"
MIN_MODELS = 2


def study_tables(results_root: Path) -> dict[str, Path]:
    """``{model folder: removal_study table}`` for every model folder of ``results_root`` that holds one."""
    root = Path(results_root)
    paths = sorted(root.glob(f"*/{STUDY}.parquet")) if root.is_dir() else []
    return {path.parent.name: path for path in paths if path.parent.name != MODEL_FREE_DIR}


def model_color(index: int) -> tuple[str, str]:
    """Colour and marker of the ``index``-th model (Okabe–Ito without yellow, then the marker list)."""
    colors = [color for name, color in OKABE_ITO.items() if name != "yellow"]
    return colors[index % len(colors)], MARKERS[index % len(MARKERS)]


def normalized_depth(blocks: pd.Series) -> np.ndarray:
    """``block / (blocks − 1)``: 0 for the first block, 1 for the last (0 when the model has one block)."""
    index = blocks.to_numpy(float)
    last = index.max()
    return index / last if last > 0 else np.zeros_like(index)


def block_importance_by_model(tables: Tables) -> Figure:
    """(a) BI and (b) angular distance (n = 1) per block against normalized depth, one line per model, log y."""
    fig, (bi_ax, angular_ax) = new_figure(ncols=2, height_ratio=0.45)
    for index, (model, frame) in enumerate(tables.items()):
        color, marker = model_color(index)
        units, angular = study_part(frame, "units"), study_part(frame, "angular")
        blocks = units[units["unit"] == "block"].sort_values("block")
        starts = angular[angular["n"] == 1].sort_values("start")
        style = {"color": color, "marker": marker, "markersize": 3, "label": model}
        bi_ax.plot(normalized_depth(blocks["block"]), blocks["influence"], **style)
        angular_ax.plot(normalized_depth(starts["start"]), starts["angular_distance"], **style)
    for ax, letter, ylabel in ((bi_ax, "a", "Block Influence (1 − cos)"), (angular_ax, "b", "angular distance")):
        ax.set_yscale("log")
        ax.set_xlabel("normalized depth (block / last block)", fontsize="small")
        ax.set_ylabel(ylabel, fontsize="small")
        ax.set_title(f"({letter})", loc="left", fontsize="small")
    handles, labels = bi_ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), frameon=False,
               fontsize="x-small")  # fmt: skip
    return fig


def _answer_level_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The answer rows the one-sentence answer speaks of: BI ordering, free mask, removal level
    min(:data:`ANSWER_LEVEL`, largest level measured)."""
    answer = study_part(frame, "answer")
    rows = answer[(answer["ordering"] == "bi") & (answer["mask_convention"] == "free")]
    if rows.empty:
        return rows
    return rows[rows["removed"] == min(ANSWER_LEVEL, int(rows["removed"].max()))]


def _equivalent(row: pd.Series) -> str:
    """The equivalent bits of the first quantizer of :data:`ANSWER_SERIES` whose curve reaches the removal's
    error (as the one-sentence answer chooses), with its code."""
    present = [s for s in ANSWER_SERIES
               if f"equivalent_bits_{s}" in row.index and pd.notna(row[f"equivalent_bits_{s}"])]  # fmt: skip
    reached = [s for s in present if str(row.get(f"equivalent_bits_{s}_censored", "")) in ("", "nan", "<NA>")]
    series = (reached or present or [None])[0]
    return "–" if series is None else f"{equivalent_bits_cell(row, series)} {SERIES_CODES.get(series, series)}"


def answer_by_model(tables: Tables) -> pd.DataFrame:
    """One row per model and view: blocks removed of all blocks, b(f), the removal's dB, best and worst method
    at b(f), equivalent bits of the answer's quantizer."""
    rows = []
    for model, frame in tables.items():
        blocks = int(study_part(frame, "units").query("unit == 'block'")["block"].nunique())
        for _, row in _answer_level_rows(frame).iterrows():
            rows.append({"model": model, "view": VIEW_CODES.get(row["view"], row["view"]),
                         "removed": f"{int(row['removed'])}/{blocks}",
                         "bits_per_decoder_parameter": row["bits_per_decoder_parameter"],
                         "removal_db": row["removal_db"], "best": method_db_cell(row, "best"),
                         "worst": method_db_cell(row, "worst"),
                         "equivalent": _equivalent(row)})  # fmt: skip
    columns = ["model", "view", "removed", "bits_per_decoder_parameter", "removal_db", "best", "worst",
               "equivalent"]
    return pd.DataFrame(rows, columns=columns)


def removal_answer_by_model(tables: Tables) -> Styler:
    """The rows of :func:`answer_by_model` as a thesis table."""
    labels = {"model": "Model", "view": "View", "removed": "$n/L$", "bits_per_decoder_parameter": "$b(f)$",
              "removal_db": "Removal", "best": "Best", "worst": "Worst", "equivalent": "$\\equiv$"}  # fmt: skip
    return thesis_table(answer_by_model(tables), labels, precision=1)


def _models_text(facts: Mapping[str, Any]) -> str:
    """Each model's id and hash, and whether the models share one protocol."""
    ids = facts["model_id"]
    models = "; ".join(f"{escape_tex(model)}: {escape_tex(ids[model])} ({escape_tex(facts['model_hash'][model])})"
                       for model in ids)  # fmt: skip
    configs = {json.dumps(protocol, sort_keys=True) for protocol in facts["protocol"].values()}
    same = ("all with the same protocol" if len(configs) == 1 else
            "with different protocols (see each model's sidecar): compare with care")  # fmt: skip
    return f"Models: {models}; {same}"


def _importance_caption(tables: Tables, facts: Mapping[str, Any]) -> str:
    return (
        "Block importance across normalized depth (block index over the last block's index), one line per model: "
        "(a) Block Influence BI $= 1 - \\mathbb{E}[\\cos(x_i, x_{i+1})]$ (ShortGPT), (b) angular distance "
        f"$\\arccos(\\cos)/\\pi$ of one block on the last token (Gromov et al.). {_models_text(facts)}."
    )


def _answer_caption(tables: Tables, facts: Mapping[str, Any]) -> str:
    codes = ", ".join(f"{code} = {escape_tex(SERIES_NAMES.get(series, series))}"
                      for series, code in SERIES_CODES.items())  # fmt: skip
    return (
        "The thesis answer per model: removing the $n$ lowest-BI of the model's $L$ blocks "
        f"($n = \\min({ANSWER_LEVEL}$, largest level measured$)$) leaves $b(f) = 16(1-f)$ bits per decoder "
        "parameter; per view (LE, LP: layer view energy- and parameter-weighted, B: block view, E2E: end to "
        "end) the removal's dB $= -10\\log_{10}$ of the view's error, the best and worst method at exactly $b(f)$ "
        "(free mask), and "
        "$\\equiv$: the equivalent bits of the quantizer the answer names (the size at which it makes the "
        f"removal's error; $<$, $>$: beyond its measured range). Codes: {codes}. {_models_text(facts)}."
    )


ARTIFACTS: tuple[Artifact, ...] = (
    Artifact("block_importance_by_model", "figure", block_importance_by_model, (STUDY,), _importance_caption,
             SECTION),
    Artifact("removal_answer_by_model", "table", removal_answer_by_model, (STUDY,), _answer_caption, SECTION),
)  # fmt: skip
"""The cross-model artifacts; each draws from ``{model folder: removal_study table}``."""


def cross_model_facts(paths: Mapping[str, Path]) -> dict[str, Any]:
    """Render facts (as :func:`figures.render.facts_from_runs` builds them) over several models, each fact a
    ``{model folder: value}`` mapping read from the model's ``removal_study`` sidecar."""
    provenances = {model: read_provenance(path) for model, path in paths.items()}
    return {
        "model_name": ", ".join(paths), "model_id": {m: p.get("model_id") for m, p in provenances.items()},
        "model_hash": {m: p.get("model_hash") for m, p in provenances.items()},
        "grid_detection": {m: p.get("grid_detection") for m, p in provenances.items()},
        "seed": {m: p.get("seed") for m, p in provenances.items()},
        "protocol": {m: p.get("config") for m, p in provenances.items()},
        "experiments": {
            f"{m}/{STUDY}": {"status": "cached", "cache_key": p.get("cache_key"),
                             "code_version": p.get("code_version"), "runtime_s": p.get("runtime_s") or 0.0,
                             "table": str(paths[m])}
            for m, p in provenances.items()
        },
    }  # fmt: skip


def render_cross_model(results_root: Path, out_dir: Path) -> list[Any]:
    """Render :data:`ARTIFACTS` into ``<out>/cross-model/`` when :data:`MIN_MODELS` or more models have a
    ``removal_study`` table in ``results_root``; return what was rendered (nothing for fewer models)."""

    paths = study_tables(results_root)
    if len(paths) < MIN_MODELS:
        return []
    tables = {model: read_table(path) for model, path in paths.items()}
    facts = cross_model_facts(paths)
    return [render_artifact(artifact, tables, facts, Path(out_dir) / CROSS_MODEL_DIR) for artifact in ARTIFACTS]
