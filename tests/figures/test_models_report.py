"""Two models side by side: after `pvq figures` for two models (toy loader, every experiment computing its
synthetic table) each model's artifacts sit in its own home, the model-free ones once in the shared folders, the
cross-model artifacts render from both models' tables, the chapter shows the chapter model, and
``paper/index.html`` shows every registered artifact of every model with existing images, an HTML table per
table, the answers and the provenance. Slow: the page in headless Chromium, the chapter with latexmk."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from figure_toys import ToyModels, toy_context

from figures.answers import ANSWERS
from figures.build import build
from figures.catalog import cross_model
from figures.catalog.removal import ANSWER_LEVEL, STUDY, VIEW_CODES, study_part
from figures.experiments import EXPERIMENTS
from figures.layout import CROSS_MODEL_DIR, artifact_home, model_dependent, model_homes
from figures.paper import ANSWERS_SECTION, RESULTS_SECTION
from figures.registry import load_catalog
from figures.report import ANSWERS_NAME, REPORT_NAME, artifact_html, esc
from figures.tex_text import plain_text, tabular_rows
from measure.models.fetch import sha256_file
from measure.records.store import read_table

REGISTERED = list(load_catalog().values())
MODELS = ("toy-a", "toy-b")
PAPER_DIR = Path(__file__).resolve().parents[2] / "paper"
OVERFULL = re.compile(r"Overfull \\hbox \(([0-9.]+)pt too wide\)")


def seeded_synthetic(exp):
    """Compute = the synthetic table, seeded by the model name (so the two models' tables differ)."""
    return lambda config, context: exp.synthetic(np.random.default_rng(zlib.crc32(context.model_name.encode())))


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(results, paper)`` after a build for toy-a (the chapter's model) and then one for toy-b."""
    root = tmp_path_factory.mktemp("two_models")
    results, out = root / "results", root / "paper"
    shutil.copytree(PAPER_DIR, out, ignore=lambda folder, names: [n for n in names if n not in ("main.tex",
                    "sections", "introduction.tex")])  # fmt: skip
    models = ToyModels(hashes={model: f"hash-{model}" for model in MODELS})
    with pytest.MonkeyPatch.context() as patch:
        for name, exp in list(EXPERIMENTS.items()):
            patch.setitem(EXPERIMENTS, name, dataclasses.replace(exp, compute=seeded_synthetic(exp)))
        for model in MODELS:
            build(REGISTERED, REGISTERED, toy_context(results, models, model), out, chapter=model == MODELS[0])
    return results, out


def test_each_model_has_its_own_artifacts_and_the_model_free_ones_are_shared(two_models):
    _, out = two_models
    assert list(model_homes(out)) == list(MODELS)
    for artifact in REGISTERED:
        homes = {artifact_home(out, artifact, model) for model in MODELS}
        assert len(homes) == (len(MODELS) if model_dependent(artifact) else 1)
        for model in MODELS:
            home = artifact_home(out, artifact, model)
            record = json.loads(artifact.sidecar(home).read_text())
            assert record["model_id"] == (model if model_dependent(artifact) else None)
            for name, digest in record["files"].items():
                assert sha256_file(artifact.stem(home).parent / name) == digest
    shared = {path.name for folder in ("figures", "tables") for path in (out / folder).glob("*.json")}
    assert shared == {f"{a.name}.json" for a in REGISTERED if not model_dependent(a)}


def test_cross_model_table_holds_each_models_answer_rows_as_stored(two_models):
    results, out = two_models
    tex = (out / CROSS_MODEL_DIR / "tables" / "removal_answer_by_model.tex").read_text()
    _, rows = tabular_rows(tex)
    shown = {(cells[0][0], cells[1][0]): cells for cells in rows}
    for model in MODELS:
        stacked = read_table(results / model / f"{STUDY}.parquet")
        answer = study_part(stacked, "answer")
        level = min(ANSWER_LEVEL, int(answer["removed"].max()))
        expected = answer[(answer["ordering"] == "bi") & (answer["mask_convention"] == "free")
                          & (answer["removed"] == level)]  # fmt: skip
        blocks = study_part(stacked, "units").query("unit == 'block'")["block"].nunique()
        assert len(expected) == len(VIEW_CODES)
        for row in expected.itertuples():
            cells = shown[(model, VIEW_CODES[row.view])]
            assert cells[2][0] == f"{level}/{blocks}"
            assert float(cells[3][0]) == pytest.approx(row.bits_per_decoder_parameter, abs=0.05)
            assert float(cells[4][0]) == pytest.approx(row.removal_db, abs=0.05)
    assert len(rows) == len(MODELS) * len(VIEW_CODES)


def test_cross_model_importance_figure_draws_each_model_over_normalized_depth(two_models):
    results, out = two_models
    assert (out / CROSS_MODEL_DIR / "figures" / "block_importance_by_model.png").stat().st_size > 0
    tables = {model: read_table(results / model / f"{STUDY}.parquet") for model in MODELS}
    figure = cross_model.block_importance_by_model(tables)
    bi_axes = figure.axes[0]
    assert [line.get_label() for line in bi_axes.lines] == list(MODELS)
    for line, model in zip(bi_axes.lines, MODELS, strict=True):
        units = study_part(tables[model], "units")
        blocks = units[units["unit"] == "block"].sort_values("block")
        np.testing.assert_allclose(line.get_xdata(), blocks["block"] / blocks["block"].max())
        np.testing.assert_allclose(line.get_ydata(), blocks["influence"])


def test_the_chapter_shows_the_chapter_model_and_the_cross_model_section(two_models):
    _, out = two_models
    section = (out / RESULTS_SECTION).read_text()
    assert f"{{{MODELS[0]}/figures/" in section and f"{MODELS[1]}/" not in section
    assert "{figures/gaussian_sqnr_vs_bits.pdf}" in section
    assert "\\input{sections/cross_model.tex}" in section
    cross = (out / "sections" / "cross_model.tex").read_text()
    assert "\\section{Across models}" in cross and f"{CROSS_MODEL_DIR}/tables/removal_answer_by_model.tex" in cross


def prose_outside_floats(section: str) -> str:
    """The plain text of a results section without its header macros, floats, table inputs and headings."""
    body = section.split("\\ifdefined\\pvqtablebox", 1)[0] + section.split("\n  \\fi}\n", 1)[-1]
    body = re.sub(r"\\begin\{figure\}.*?\\end\{figure\}", " ", body, flags=re.DOTALL)
    lines = [line for line in body.splitlines()
             if not line.startswith(("%", "\\pvqtable", "\\IfFileExists", "\\section", "\\begin{itemize}",
                                     "\\end{itemize}"))]  # fmt: skip
    return plain_text("\n".join(lines))


def test_the_chapter_opens_every_section_with_prose_and_closes_with_the_answers(two_models):
    results, out = two_models
    section = (out / RESULTS_SECTION).read_text()
    headings = re.findall(r"\\section\{([^}]*)\}\n\n(.)", section)
    assert headings and all(first != "\\" for _, first in headings), headings
    assert headings[-1][0] == ANSWERS_SECTION
    assert len(prose_outside_floats(section).split()) >= 600
    for declared in ANSWERS.values():
        tables = {name: read_table(results / MODELS[0] / f"{name}.parquet") for name in declared.needs}
        assert f"\\item \\textbf{{{declared.question}}} {declared.sentence(tables)}" in section


class PageParser(HTMLParser):
    """Image sources, element ids, number of tables and the visible text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.ids: list[str] = []
        self.tables = 0
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "img":
            self.images.append(str(found["src"]))
        if "id" in found:
            self.ids.append(str(found["id"]))
        self.tables += tag == "table"

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parsed_report(out: Path) -> PageParser:
    parser = PageParser()
    parser.feed((out / REPORT_NAME).read_text())
    return parser


def test_the_report_shows_every_artifact_of_every_model_and_every_image_exists(two_models):
    _, out = two_models
    page = parsed_report(out)
    assert page.images and all((out / src).is_file() for src in page.images)
    expected = {f"{a.folder}-{a.name}" for a in REGISTERED if not model_dependent(a)}
    expected |= {f"{model}-{a.folder}-{a.name}" for model in MODELS for a in REGISTERED if model_dependent(a)}
    expected |= {f"{CROSS_MODEL_DIR}-{a.folder}-{a.name}" for a in cross_model.ARTIFACTS}
    assert expected <= set(page.ids)
    figures = [name for name in expected if "-figures-" in name or name.startswith("figures-")]
    assert len(page.images) == len(figures)
    assert page.tables == len(expected) - len(figures)
    assert {f"model-{model}" for model in MODELS} <= set(page.ids)


def test_the_report_states_each_models_answer_first(two_models):
    results, out = two_models
    html_text = (out / REPORT_NAME).read_text()
    text = "".join(parsed_report(out).text)
    for model in MODELS:
        for declared in ANSWERS.values():
            tables = {name: read_table(results / model / f"{name}.parquet") for name in declared.needs}
            sentence = plain_text(declared.sentence(tables))
            assert sentence and sentence in text and "one model" in sentence  # the protocol's scale
            position = html_text.index(esc(sentence))
            assert html_text.index("<h2>Answers</h2>") < position < html_text.index('<section id="shared">')


def test_answers_markdown_beside_the_report_holds_every_answer_of_every_model(two_models):
    results, out = two_models
    text = (out / ANSWERS_NAME).read_text()
    assert len(ANSWERS) >= 4  # per tensor, removal at equal size, the optimal mixture, width against depth
    for model in MODELS:
        assert f"## {model}" in text
        for declared in ANSWERS.values():
            tables = {name: read_table(results / model / f"{name}.parquet") for name in declared.needs}
            assert f"**{declared.question}** {plain_text(declared.sentence(tables))}" in text


def test_report_text_is_escaped_and_a_table_is_read_from_its_booktabs_source(tmp_path):
    folder = tmp_path / "tables"
    folder.mkdir()
    (folder / "toy.tex").write_text(
        "\\begin{tabular}{lr}\n\\toprule\nName & $b$ [dB] \\\\\n\\midrule\na\\_b <i> & 3.5 \\\\\n\\bottomrule\n"
        "\\end{tabular}\n"
    )  # fmt: skip
    record = {"artifact": "toy", "kind": "table", "caption": "Caption <script>alert(1)</script> & 5\\%",
              "model_id": "m<1>", "packages": {"numpy": "2"}, "protocol": {"x": "<y>"}}  # fmt: skip
    (folder / "toy.json").write_text(json.dumps(record))
    html_text = artifact_html(folder / "toy.json", tmp_path)
    assert "<script>" not in html_text and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; 5%" in html_text
    assert '<td class="left">a_b &lt;i&gt;</td><td>3.5</td>' in html_text and "<th>b [dB]</th>" in html_text
    assert "m&lt;1&gt;" in html_text and "&lt;y&gt;" in html_text and "<details>" in html_text


def chromium() -> str | None:
    return next((path for name in ("chromium", "chromium-browser", "google-chrome")
                 if (path := shutil.which(name))), None)  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (Debian: apt-get install chromium), so "
                    "the report cannot be rendered in a browser here")  # fmt: skip
def test_chromium_renders_the_report_to_a_non_blank_screenshot(two_models, tmp_path):
    from PIL import Image

    _, out = two_models
    shot = tmp_path / "report.png"
    page = (out / REPORT_NAME).resolve().as_uri()
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--window-size=1200,3000", f"--screenshot={shot}", page]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert shot.is_file(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (3000, 1200)
    dark = (pixels < 128).mean()
    assert 0.002 < dark < 0.5, f"{dark:.4f} of the pixels are dark: the page did not render"
    assert len(np.unique(pixels)) > 16  # text, images and tables, not a flat colour


def overfull_boxes(log: str) -> list[float]:
    """Widths (pt) by which the boxes reported ``Overfull \\hbox`` in a LaTeX log exceed their line."""
    return [float(width) for width in OVERFULL.findall(log)]


def test_overfull_boxes_are_read_from_a_latex_log():
    log = ("Overfull \\hbox (141.69173pt too wide) in paragraph at lines 1--40\n"
           "Underfull \\hbox (badness 1924) in paragraph\n"
           "Overfull \\hbox (0.5pt too wide) in alignment\n")  # fmt: skip
    assert overfull_boxes(log) == [141.69173, 0.5]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("latexmk") is None, reason="LaTeX is not installed (Debian: apt-get install "
                    "latexmk texlive-latex-extra), so the chapter cannot be built here")  # fmt: skip
def test_the_chapter_builds_with_every_table_and_figure_inside_the_text_block(two_models, tmp_path):
    _, built = two_models
    out = tmp_path / "paper"
    shutil.copytree(built, out)
    wide = pd.DataFrame(np.arange(60.0).reshape(2, 30) * 1234.5, columns=[f"column {i}" for i in range(30)])
    (out / "tables" / "wide_probe.tex").write_text(wide.style.format(precision=1).hide(axis="index")
                                                   .to_latex(hrules=True))  # fmt: skip
    section = out / RESULTS_SECTION
    probe = "\\pvqtable{tab:wide_probe}{A table three text widths wide.}{\\input{tables/wide_probe.tex}}\n"
    section.write_text(section.read_text() + probe)
    command = ["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "-outdir=build", "main.tex"]
    done = subprocess.run(command, cwd=out, capture_output=True, text=True, timeout=300)
    log = (out / "build" / "main.log").read_text(errors="replace")
    assert done.returncode == 0, done.stdout[-3000:]
    too_wide = [width for width in overfull_boxes(log) if width > 1.0]
    assert not too_wide, f"overfull boxes (pt too wide): {too_wide}; see {out / 'build' / 'main.log'}"
