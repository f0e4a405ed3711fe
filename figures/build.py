"""One ``pvq figures`` run: run missing experiments, render every artifact to its home, the cross-model
artifacts when two or more models have results, the chapter's results section and the HTML report.

It sits above the catalog (:mod:`figures.catalog.cross_model` draws from several models' tables), below the CLI.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from figures.answers import ANSWERS, PROSE, section_paragraphs, stated_answers
from figures.catalog.cross_model import render_cross_model
from figures.experiments import ExperimentContext, ExperimentRun, ensure, lookup, model_slug
from figures.layout import artifact_home
from figures.paper import write_cross_model_section, write_results_section
from figures.registry import Artifact, needed_experiments
from figures.render import RenderedArtifact, facts_from_runs, render_artifact
from figures.report import model_tables, write_report


@dataclass(frozen=True)
class BuildReport:
    """What one ``pvq figures`` run did."""

    runs: dict[str, ExperimentRun]
    rendered: list[RenderedArtifact]
    results_section: Path | None
    seconds: float
    cross_model: list[RenderedArtifact] = field(default_factory=list)
    report: Path | None = None


def build(
    artifacts: Sequence[Artifact], registered: Sequence[Artifact], context: ExperimentContext, out_dir: Path,
    *, verbose: bool = True, chapter: bool = True,
) -> BuildReport:
    """Run missing/stale experiments of ``artifacts``, render them, then the cross-model artifacts and the HTML
    report, and (with ``chapter``) regenerate the chapter's results section for this model.

    Each artifact goes to its home (:func:`figures.layout.artifact_home`): the model's folder
    ``<out>/<model>/`` when it depends on the model, the shared ``<out>/`` otherwise. The results section lists
    every artifact of ``registered`` that has been rendered for this model (so ``--only`` does not drop the
    others from the chapter); its paragraphs and closing answers read this model's stored tables beside the ones
    just run. The cross-model artifacts are rendered when two or more models have results
    (:mod:`figures.catalog.cross_model`); ``<out>/index.html`` shows every model rendered (:mod:`figures.report`).
    Without ``verbose`` the experiments run with third-party output silenced (:func:`figures.experiments.ensure`).
    """
    start = time.perf_counter()
    runs = ensure(lookup(needed_experiments(artifacts)), context, verbose=verbose)
    rendered = []
    with tqdm(artifacts, desc="rendering", unit="artifact", disable=None) as bar:
        for artifact in bar:
            bar.set_postfix_str(artifact.name)
            tables = {name: runs[name].table() for name in artifact.needs}
            home = artifact_home(out_dir, artifact, context.model_name)
            rendered.append(render_artifact(artifact, tables, facts_from_runs(artifact, runs), home))
    cross_model = render_cross_model(context.results_root, Path(out_dir))
    write_cross_model_section(Path(out_dir))
    stated = {name for declared in (*PROSE.values(), *ANSWERS.values()) for name in declared.needs}
    tables = {**model_tables(model_slug(context.model_name), context.results_root, stated),
              **{name: run.table() for name, run in runs.items()}}  # fmt: skip
    section = write_results_section(Path(out_dir), registered, context.model_name, section_paragraphs(tables),
                                    stated_answers(tables)) if chapter else None  # fmt: skip
    report = write_report(Path(out_dir), context.results_root, registered)
    return BuildReport(runs, rendered, section, time.perf_counter() - start, cross_model, report)


def summary(report: BuildReport) -> str:
    """Human-readable account: experiments computed vs from cache, files rendered, wall time."""
    computed = [run for run in report.runs.values() if run.status == "computed"]
    lines = [
        f"experiments: {len(computed)} computed, {len(report.runs) - len(computed)} from cache",
        *(f"  {run.status:<9} {run.name:<32} {run.seconds:8.1f} s  {run.path}" for run in report.runs.values()),
        f"rendered: {len(report.rendered)} figures/tables",
        *(f"  {item.kind:<9} {item.name:<32} {item.seconds:8.1f} s  "
          f"{', '.join(str(path) for path in item.files)}" for item in report.rendered),
        *(f"  {item.kind:<9} {item.name:<32} {item.seconds:8.1f} s  "
          f"{', '.join(str(path) for path in item.files)}" for item in report.cross_model),
        f"results section: {report.results_section or 'kept (another model is the chapter model)'}",
        f"report: {report.report}",
        f"wall time: {report.seconds:.1f} s",
    ]
    return "\n".join(lines)
