"""``paper/index.html``: every rendered figure and table in one page that opens in any browser.

The page is built only from what ``pvq figures`` wrote into the paper folder and the result tables:

1. the one-sentence answers of the thesis sections (:mod:`figures.answers`), for every model with results;
2. the shared model-free artifacts, then each model's home (:mod:`figures.layout`), then the cross-model
   artifacts: each figure as its PNG with its caption, each table as an HTML table parsed from its booktabs
   ``.tex`` (:func:`figures.tex_text.tabular_rows`), and under each a collapsible ``<details>`` with the
   provenance summary read from its JSON sidecar (model id and hash, grid detection, protocol, seed, git
   commit, package versions, runtime);
3. the registered artifacts not rendered for a model, by name.

Captions are shown as plain text (:func:`figures.tex_text.plain_text`). Every text is HTML-escaped; the page
has no script and loads nothing but the PNGs beside it. It is written atomically.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from figures.answers import ANSWERS, stated_answers
from figures.experiments import EXPERIMENTS, MODEL_FREE_DIR, model_slug
from figures.layout import CROSS_MODEL_DIR, model_dependent, model_homes
from figures.registry import Artifact
from figures.tex_text import column_alignments, plain_text, tabular_rows
from measure.models.defaults import DEFAULT_MODEL
from measure.records.atomic import write_text_atomic
from measure.records.store import read_table

REPORT_NAME = "index.html"
ALIGN_CLASS = {"l": "left", "c": "center"}
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 62rem; margin: 2rem auto; padding: 0 1rem; color: #111;
       line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 1px solid #ccc; margin-top: 2.5rem; } h3 { margin-top: 1.8rem; }
nav a { margin-right: 1rem; }
.artifact { margin: 1.5rem 0 2rem; }
body { counter-reset: figure table; }
.artifact.figure h4::before { counter-increment: figure; content: "Figure " counter(figure) ": "; }
.artifact.table h4::before { counter-increment: table; content: "Table " counter(table) ": "; }
.artifact img { max-width: 100%; height: auto; border: 1px solid #eee; }
.caption, figcaption { font-size: 0.9rem; color: #333; }
table.data { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
table.data th, table.data td { padding: 0.15rem 0.5rem; text-align: right; white-space: nowrap; }
table.data thead { border-top: 2px solid #000; border-bottom: 1px solid #000; }
table.data tbody { border-bottom: 2px solid #000; }
table.data .left { text-align: left; white-space: normal; min-width: 8rem; }
table.data .center { text-align: center; }
.scroll { overflow-x: auto; }
details { font-size: 0.85rem; background: #f6f6f6; padding: 0.3rem 0.6rem; }
details dt { font-weight: bold; margin-top: 0.3rem; }
details pre { white-space: pre-wrap; margin: 0; }
.answer { background: #eef5ff; padding: 0.5rem 0.8rem; }
.missing { color: #a00; } .opt-in { color: #777; }
"""


def esc(value: Any) -> str:
    """``value`` as HTML-escaped text (quotes included, so it is safe in attributes too)."""
    return html.escape(str(value), quote=True)


def _pretty(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, indent=1, sort_keys=True, default=str)


def _grid_text(grid: Any) -> str:
    """The grid-detection verdict (per model for cross-model artifacts)."""
    if isinstance(grid, Mapping) and "verdict" in grid:
        return str(grid["verdict"])
    if isinstance(grid, Mapping):
        return "; ".join(f"{model}: {_grid_text(value)}" for model, value in grid.items())
    return str(grid)


def provenance_html(record: Mapping[str, Any]) -> str:
    """The ``<details>`` provenance summary of one sidecar."""
    packages = record.get("packages") or {}
    runtime = record.get("runtime_s") or {}
    experiments = record.get("experiments") or {}
    rows = [
        ("model", f"{_pretty(record.get('model_id'))} (hash {_pretty(record.get('model_hash'))})"),
        ("grid detection", _grid_text(record.get("grid_detection"))),
        ("seed", _pretty(record.get("seed"))),
        ("git commit", record.get("git_commit")),
        ("runtime", "; ".join(f"{key} {value} s" for key, value in runtime.items()) if isinstance(runtime, Mapping)
         else f"{runtime} s"),
        ("experiments", "; ".join(f"{name}: {entry.get('status')}, cache key {entry.get('cache_key')}, code "
                                  f"{entry.get('code_version')}, {entry.get('runtime_s')} s"
                                  for name, entry in experiments.items())),
        ("created (UTC)", record.get("created_utc")),
        ("packages", ", ".join(f"{name} {version}" for name, version in sorted(packages.items()))),
        ("python, platform", f"{record.get('python')}, {record.get('platform')}"),
    ]  # fmt: skip
    items = "".join(f"<dt>{esc(key)}</dt><dd>{esc(value)}</dd>" for key, value in rows)
    protocol = f"<dt>protocol</dt><dd><pre>{esc(_pretty(record.get('protocol')))}</pre></dd>"
    return f"<details><summary>Provenance</summary><dl>{items}{protocol}</dl></details>"


def table_html(tex: str) -> str:
    """A booktabs ``.tex`` table as an HTML table (its LaTeX source verbatim when it cannot be parsed)."""
    try:
        head, body = tabular_rows(tex)
    except ValueError:
        return f"<pre>{esc(tex)}</pre>"
    aligned = column_alignments(tex)

    def row(cells: Sequence[tuple[str, int]], tag: str) -> str:
        parts, column = [], 0
        for text, span in cells:
            attributes = f' colspan="{span}"' if span > 1 else ""
            if span == 1 and column < len(aligned) and aligned[column] != "r":
                attributes += f' class="{ALIGN_CLASS[aligned[column]]}"'
            parts.append(f"<{tag}{attributes}>{esc(text)}</{tag}>")
            column += span
        return "<tr>" + "".join(parts) + "</tr>"

    thead = "".join(row(cells, "th") for cells in head)
    tbody = "".join(row(cells, "td") for cells in body)
    return f'<div class="scroll"><table class="data"><thead>{thead}</thead><tbody>{tbody}</tbody></table></div>'


def artifact_html(sidecar: Path, out_dir: Path) -> str:
    """One artifact: its PNG or HTML table, its caption and its provenance, from its sidecar."""
    record = json.loads(sidecar.read_text())
    name, kind = record["artifact"], record["kind"]
    stem = sidecar.with_suffix("")
    caption = esc(plain_text(record.get("caption", "")))
    anchor = esc(stem.relative_to(out_dir).as_posix().replace("/", "-"))
    if kind == "figure":
        png = stem.with_suffix(".png")
        shown = (f'<figure><img src="{esc(png.relative_to(out_dir).as_posix())}" alt="{esc(name)}">'
                 f"<figcaption>{caption}</figcaption></figure>" if png.is_file() else
                 f'<p class="missing">{esc(png.name)} is missing; rerun pvq figures</p>')  # fmt: skip
    else:
        tex = stem.with_suffix(".tex")
        shown = (f'<p class="caption">{caption}</p>'
                 + (table_html(tex.read_text()) if tex.is_file() else
                    f'<p class="missing">{esc(tex.name)} is missing; rerun pvq figures</p>'))  # fmt: skip
    return (f'<article class="artifact {esc(kind)}" id="{anchor}">'
            f"<h4>{esc(name)} <small>({esc(kind)})</small></h4>{shown}{provenance_html(record)}</article>")


def _sections_html(home: Path, out_dir: Path, artifacts: Sequence[Artifact]) -> str:
    """The artifacts of ``artifacts`` rendered into ``home``, grouped by section; then those not rendered."""
    sections: dict[str, list[str]] = {}
    missing, opt_in = [], []
    for artifact in artifacts:
        sidecar = artifact.sidecar(home)
        if sidecar.is_file():
            sections.setdefault(artifact.section, []).append(artifact_html(sidecar, out_dir))
        else:
            (missing if artifact.default else opt_in).append(artifact.name)
    parts = [f"<h3>{esc(section)}</h3>" + "".join(blocks) for section, blocks in sections.items()]
    if missing:
        parts.append(f'<p class="missing">Not rendered here yet: {esc(", ".join(missing))}.</p>')
    parts += [f'<p class="opt-in">Opt-in, not in the default run: {esc(name)} (render it with '
              f"<code>pvq figures --only {esc(name)}</code>).</p>" for name in opt_in]  # fmt: skip
    return "".join(parts)


def _results_folder(results_root: Path, model: str, experiment: str) -> Path:
    folder = model if EXPERIMENTS[experiment].needs_model else MODEL_FREE_DIR
    return Path(results_root) / folder / f"{experiment}.parquet"


def model_tables(model: str, results_root: Path, names: Iterable[str]) -> dict[str, Any]:
    """The result tables of ``names`` that ``model`` has in ``results_root``, by experiment name."""
    paths = {name: _results_folder(results_root, model, name) for name in names}
    return {name: read_table(path) for name, path in paths.items() if path.is_file()}


def model_answers(model: str, results_root: Path) -> list[tuple[str, str]]:
    """(question, plain-text answer) of every declared answer for ``model``
    (:func:`figures.answers.stated_answers`: computed from its tables in ``results_root``, or what the answer
    says while they are missing)."""
    names = {name for declared in ANSWERS.values() for name in declared.needs}
    return [(question, plain_text(text))
            for question, text in stated_answers(model_tables(model, results_root, names))]  # fmt: skip


def answers_html(models: Iterable[str], results_root: Path) -> str:
    """Per model, every declared section answer whose tables are in ``results_root``."""
    parts = []
    for model in models:
        items = [f"<dt>{esc(question)}</dt><dd>{esc(sentence)}</dd>"
                 for question, sentence in model_answers(model, results_root)]  # fmt: skip
        body = f"<dl>{''.join(items)}</dl>" if items else (
            f"<p>No answer yet: the tables behind the answers are not in {esc(results_root)}.</p>")
        parts.append(f'<div class="answer"><h3>{esc(model)}</h3>{body}</div>')
    return "".join(parts) or "<p>No model has been rendered yet: run <code>make figures</code>.</p>"


def default_first(homes: Mapping[str, Path]) -> dict[str, Path]:
    """The model homes with the default model's first, the others by name."""

    default = model_slug(DEFAULT_MODEL)
    return dict(sorted(homes.items(), key=lambda item: (item[0] != default, item[0])))


def report_html(out_dir: Path, results_root: Path, registered: Sequence[Artifact]) -> str:
    """The whole page for the paper folder ``out_dir`` (see the module docstring)."""
    out_dir = Path(out_dir)
    homes = default_first(model_homes(out_dir))
    shared = [artifact for artifact in registered if not model_dependent(artifact)]
    per_model = [artifact for artifact in registered if model_dependent(artifact)]
    cross = sorted((out_dir / CROSS_MODEL_DIR).glob("*/*.json"))
    nav = [("answers", "Answers"), ("shared", "Model-free"), *((f"model-{m}", m) for m in homes)]
    if cross:
        nav.append(("cross-model", "Across models"))
    body = [
        "<h1>pvq: pruning vs quantization of LLMs, results</h1>",
        '<section id="answers"><h2>Answers</h2>' + answers_html(homes, results_root) + "</section>",
        "<p>Below, every figure and table of <code>pvq figures</code> with its caption and provenance; the "
        f"experiment tables behind them are in <code>{esc(results_root)}</code>. Compare them with published "
        "results (an archive written by <code>pvq figures --archive</code>): "
        "<code>pvq verify &lt;published results&gt;</code>.</p>",
        "<nav>" + "".join(f'<a href="#{esc(key)}">{esc(title)}</a>' for key, title in nav) + "</nav>",
        '<section id="shared"><h2>Model-free</h2>' + _sections_html(out_dir, out_dir, shared) + "</section>",
    ]
    for model, home in homes.items():
        body.append(f'<section id="model-{esc(model)}"><h2>Model {esc(model)}</h2>'
                    + _sections_html(home, out_dir, per_model) + "</section>")  # fmt: skip
    if cross:
        body.append('<section id="cross-model"><h2>Across models</h2>'
                    + "".join(artifact_html(sidecar, out_dir) for sidecar in cross) + "</section>")  # fmt: skip
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>pvq results</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")  # fmt: skip


def write_report(out_dir: Path, results_root: Path, registered: Sequence[Artifact]) -> Path:
    """Write ``<out>/index.html`` and ``<out>/ANSWERS.md`` (:func:`answers_markdown`) atomically and return the
    report's path."""
    path = Path(out_dir) / REPORT_NAME
    write_text_atomic(path, report_html(Path(out_dir), Path(results_root), registered))
    homes = default_first(model_homes(Path(out_dir)))
    write_text_atomic(Path(out_dir) / ANSWERS_NAME, answers_markdown(homes, Path(results_root)))
    return path


ANSWERS_NAME = "ANSWERS.md"
"""The answers in plain Markdown beside the report, for the README to link to (never typed by hand)."""


def answers_markdown(models: Iterable[str], results_root: Path) -> str:
    """Per model, every declared section answer whose tables are in ``results_root``, as Markdown (computed from
    the tables like the report's; regenerated by every ``pvq figures``)."""
    lines = ["# The thesis answers, generated from the result tables by `pvq figures`", ""]
    for model in models:
        found = model_answers(model, results_root)
        lines += [f"## {model}", ""]
        lines += [line for question, sentence in found for line in (f"**{question}** {sentence}", "")]
        if not found:
            lines += ["No answer yet: run `make figures`.", ""]
    return "\n".join(lines)
