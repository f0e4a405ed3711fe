"""LaTeX captions and booktabs tables read as plain text, as the HTML report shows them."""

from __future__ import annotations

import pandas as pd
import pytest
from figure_toys import synthetic_facts

from figures.answers import PROSE, section_paragraphs
from figures.registry import ARTIFACTS, check_tex, load_catalog, synthetic_tables
from figures.style import thesis_table
from figures.tex_text import column_alignments, plain_text, tabular_rows
from theory.errors import PvqError


@pytest.mark.parametrize(("tex", "text"), [
    (r"BI $= 1 - \mathbb{E}[\cos(x_i, x_{i+1})]$", "BI = 1 - E[cos(x_i, x_(i+1))]"),
    (r"$\lVert y_i \rVert^2$, $-10\log_{10}$, $H^{1/2}$", "‖ y_i ‖², -10log₁₀, H^(1/2)"),
    (r"$\equiv$G, a\_b, 5\%, rate--distortion, mask ``none''", "≡G, a_b, 5%, rate–distortion, mask “none”"),
    (r"definitions in Fig.~\ref{fig:removal_vs_bounds}", "definitions in Fig. removal_vs_bounds"),
    (r"$\mathrm{tr}(\Delta W H \Delta W^\top)$, $\{1, 2\}$", "tr(Δ W H Δ Wᵀ), {1, 2}"),
])  # fmt: skip
def test_caption_markup_becomes_plain_unicode_text(tex, text):
    assert plain_text(tex) == text


def test_a_styler_table_reads_back_as_its_header_and_cells():
    frame = pd.DataFrame({"name": ["a_b", "c"], "x": [1.25, 2.5]})
    tex = thesis_table(frame, {"name": "Name", "x": "$x$ [dB]"}, precision=1).to_latex(hrules=True)
    head, body = tabular_rows(tex)
    assert head == [[("Name", 1), ("x [dB]", 1)]]
    assert body == [[("a_b", 1), (f"{1.25:.1f}", 1)], [("c", 1), ("2.5", 1)]]
    assert column_alignments(tex) == ["l", "r"]


def test_multicolumn_headers_keep_their_span_and_a_non_table_is_refused():
    tex = ("\\begin{tabular}{lrr}\n\\toprule\n & \\multicolumn{2}{c}{SQNR [dB]} \\\\\nLayer & INT & prune \\\\\n"
           "\\midrule\nq & 1.0 & 2.0 \\\\\n\\bottomrule\n\\end{tabular}\n")  # fmt: skip
    head, body = tabular_rows(tex)
    assert head == [[("", 1), ("SQNR [dB]", 2)], [("Layer", 1), ("INT", 1), ("prune", 1)]]
    assert body == [[("q", 1), ("1.0", 1), ("2.0", 1)]]
    with pytest.raises(ValueError, match="booktabs"):
        tabular_rows("\\begin{tabular}{l} a \\end{tabular}")


@pytest.mark.parametrize("text", [r"95 \% intervals, $\{1, 2\}$", r"\caption-free {nested {braces}}", "plain"])
def test_safe_latex_text_passes_unchanged(text):
    assert check_tex(text, "a caption") == text


@pytest.mark.parametrize(("text", "match"), [
    ("95 % intervals", "bare %"), ("{open", "unbalanced"), ("close}", "unbalanced"), ("{a} }", "unbalanced"),
])  # fmt: skip
def test_a_bare_percent_or_unbalanced_brace_is_refused_by_name(text, match):
    with pytest.raises(PvqError, match=f"a caption: .*{match}"):
        check_tex(text, "a caption")


def test_every_registered_caption_is_safe_latex_on_the_synthetic_tables():
    """A bare % in a caption comments out its closing brace and stops the chapter's LaTeX build (the CI failure
    of the mixture caption); every caption is checked on the stand-in tables without needing LaTeX."""
    load_catalog()
    for artifact in ARTIFACTS.values():
        check_tex(artifact.caption(synthetic_tables(artifact.needs), synthetic_facts(artifact)), artifact.name)


def test_every_generated_section_paragraph_is_safe_latex_on_the_synthetic_tables():
    load_catalog()
    needs = [name for declared in PROSE.values() for name in declared.needs]
    paragraphs = section_paragraphs(synthetic_tables(needs))
    assert paragraphs
    for section, paragraph in paragraphs.items():
        check_tex(paragraph, section)


def test_a_command_line_flag_in_typewriter_keeps_its_two_hyphens_while_a_range_gets_an_en_dash():
    assert plain_text("lm-eval \\texttt{--limit 20}, 4.2--4.6") == "lm-eval --limit 20, 4.2–4.6"
