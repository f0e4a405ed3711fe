"""Render artifacts: figures as PDF (vector) + PNG (300 dpi), tables as booktabs LaTeX, each with provenance.

Every file is written atomically (temp file renamed into place). Output is deterministic: PDFs carry
no creation date, PNGs no timestamp, SVG ids use a fixed salt, and tables are plain text, so two runs
on one machine give identical bytes. The sidecar ``NAME.json`` records package versions, git commit,
model id + hash, grid detection, seed, protocol (each experiment's config), experiment cache keys,
runtime, the caption and the sha256 of every file written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure
from pandas.io.formats.style import Styler

from figures.experiments import NO_MODEL, ExperimentRun
from figures.registry import Artifact, Tables, check_tex
from figures.style import THESIS_RC
from measure.models.fetch import sha256_file
from measure.records.atomic import atomic_path, write_text_atomic
from measure.records.provenance import collect
from theory.errors import PvqError

PDF_METADATA = {"CreationDate": None, "ModDate": None}
PNG_METADATA = {"Software": None}
PNG_DPI = 300


@dataclass(frozen=True)
class RenderedArtifact:
    """Files written for one artifact and how long drawing them took."""

    name: str
    kind: str
    files: tuple[Path, ...]
    sidecar: Path
    seconds: float


def facts_from_runs(artifact: Artifact, runs: Mapping[str, ExperimentRun]) -> dict[str, Any]:
    """Model, seed, protocol and experiment cache facts for an artifact, read from its experiments."""
    provenances = {name: runs[name].provenance for name in artifact.needs}
    with_model = [prov for prov in provenances.values() if prov.get("model_id") is not None]
    model = with_model[0] if with_model else NO_MODEL
    return {
        **{key: model[key] for key in NO_MODEL},
        "seed": next(iter(provenances.values()))["seed"],
        "protocol": {name: prov["config"] for name, prov in provenances.items()},
        "experiments": {
            name: {
                "status": runs[name].status, "cache_key": prov["cache_key"],
                "code_version": prov["code_version"], "runtime_s": prov["runtime_s"],
                "table": str(runs[name].path),
            }
            for name, prov in provenances.items()
        },
    }


def save_figure(figure: Figure, stem: Path) -> tuple[Path, ...]:
    """Write ``stem.pdf`` and ``stem.png`` (300 dpi) atomically, without timestamps."""
    pdf, png = stem.with_suffix(".pdf"), stem.with_suffix(".png")
    with atomic_path(pdf) as tmp:
        figure.savefig(tmp, format="pdf", metadata=PDF_METADATA)
    with atomic_path(png) as tmp:
        figure.savefig(tmp, format="png", dpi=PNG_DPI, metadata=PNG_METADATA)
    return pdf, png


def save_table(styler: Styler, stem: Path) -> tuple[Path, ...]:
    """Write ``stem.tex``: a booktabs ``tabular`` (``\\toprule``/``\\midrule``/``\\bottomrule``)."""
    tex = stem.with_suffix(".tex")
    write_text_atomic(tex, styler.to_latex(hrules=True))
    return (tex,)


def draw(artifact: Artifact, tables: Tables) -> Figure | Styler:
    """Call the artifact's draw function in the thesis style and check what it returned."""
    expected = Figure if artifact.kind == "figure" else Styler
    with matplotlib.rc_context(THESIS_RC):
        drawn = artifact.draw(tables)
    if not isinstance(drawn, expected):
        raise PvqError(
            f"{artifact.kind} {artifact.name!r} returned {type(drawn).__name__}; "
            f"it must return a {expected.__name__}"
        )
    return drawn


def render_artifact(
    artifact: Artifact, tables: Tables, facts: Mapping[str, Any], out_dir: Path
) -> RenderedArtifact:
    """Draw one artifact from its tables, save it and write its provenance sidecar last."""
    start = time.perf_counter()
    stem = artifact.stem(out_dir)
    drawn = draw(artifact, tables)
    caption = check_tex(artifact.caption(tables, facts), f"the caption of {artifact.name}")
    sidecar = artifact.sidecar(out_dir)
    sidecar.unlink(missing_ok=True)  # an old sidecar must not vouch for files being replaced
    with matplotlib.rc_context(THESIS_RC):
        files = save_figure(drawn, stem) if artifact.kind == "figure" else save_table(drawn, stem)
    seconds = time.perf_counter() - start
    experiment_seconds = sum(entry["runtime_s"] for entry in facts["experiments"].values())
    provenance = collect(
        artifact=artifact.name, kind=artifact.kind, section=artifact.section, caption=caption,
        needs=list(artifact.needs), **facts,
        runtime_s={"render": round(seconds, 3), "experiments": round(experiment_seconds, 3)},
        files={path.name: sha256_file(path) for path in files},
    )
    write_text_atomic(sidecar, json.dumps(provenance, indent=2, sort_keys=True, default=str))
    return RenderedArtifact(artifact.name, artifact.kind, files, sidecar, seconds)
