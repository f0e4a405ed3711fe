"""Every section paragraph of the chapter is computed from the tables: numbers recomputed here from the same
synthetic tables, and the phrase structure that carries them."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from figures.answers import ANSWERS, PROSE, interval_verdict, section_paragraphs, stated_answers
from figures.catalog import bounds, frontier, mixture, models, removal, theory, weights, width
from figures.labels import spec_label
from figures.paper import answers_tex
from figures.registry import escape_tex, load_catalog, synthetic_tables
from figures.tex_text import plain_text
from measure.bounds import INTERVAL_LEVEL
from theory.accounting import BASE_BITS


def test_each_thesis_question_section_has_a_paragraph_with_its_scale_and_threats() -> None:
    tables = synthetic_tables(tuple({name for declared in PROSE.values() for name in declared.needs}))
    paragraphs = section_paragraphs(tables)
    assert {removal.SECTION, mixture.SECTION, weights.SECTION} <= set(paragraphs)
    for text in paragraphs.values():
        assert "Threats to validity" in text and len(text.split()) > 60


def test_the_removal_paragraph_recomputes_its_numbers_from_the_study() -> None:
    tables = synthetic_tables((removal.STUDY,))
    frame = tables[removal.STUDY]
    text = removal.removal_prose(tables)
    blocks = removal.study_part(frame, "units").query("unit == 'block'")["block"].nunique()
    assert f"The model has {blocks} blocks" in text
    share = removal.study_part(frame, "view_shares").set_index("view").loc["block", "sink_share"]
    assert f"holds {100 * share:.0f} \\% of the block view's denominator" in text
    points = removal.study_part(frame, "points")
    row = points[(points["term"] == "gptq:4:g128") & (points["view"] == "layer_energy")].iloc[0]
    assert f"{10 * np.log10(row['error'] / row['error_in_sample']):.1f} dB better" in text
    stored = removal.study_part(frame, "base")["stored_bits_per_decoder_parameter"].iloc[0]
    assert f"stored at {stored:.2f} bits per decoder parameter" in text
    assert removal._answer_sentence(removal._answer_rows(tables)) in text


def test_the_mixture_and_tensor_paragraphs_recompute_their_numbers() -> None:
    tables = synthetic_tables((mixture.MIXTURE, weights.STUDY))
    text = mixture.mixture_prose(tables)
    counts = tables[mixture.MIXTURE]["sensitivity"].value_counts()
    assert f"{counts['kl']} allocations solved exactly" in text and f"{counts['uniform']} uniform options" in text
    assert escape_tex(mixture._verdict(tables)) in text
    frame = tables[weights.STUDY]
    tensor = weights.tensor_prose(tables)
    for bits, rows in frame.groupby("bits"):
        favour = int((~rows["pruning_wins"]).sum())
        assert f"at {bits} bits quantization has the higher weight SQNR for {favour} of {len(rows)}" in tensor
    rho = frame[["kurtosis", "diff_db"]].corr(method="spearman").iloc[0, 1]
    assert f"is {rho:.2f}." in tensor


NUMBER = re.compile(r"(?<![\w.])[-+−]?\d+(?:\.\d+)?")
CONSTANTS = {str(BASE_BITS), f"{100 * INTERVAL_LEVEL:g}"}
"""Numbers a paragraph may state that are conventions of the code, not results: the 16-bit base, the 95 % level."""


def numbers_in(text: str) -> set[str]:
    """Every number written in ``text`` outside inline math (``$2^b$`` names a quantity, it states no result); a
    range ``a--b`` is two numbers, not ``a`` and ``-b``."""
    return set(NUMBER.findall(re.sub(r"\$[^$]*\$", " ", text).replace("--", " – ")))


def assert_every_number_is(text: str, expected: set[str]) -> None:
    """Every number of ``text`` is one the test recomputed from the tables (or a convention of the code)."""
    assert numbers_in(text) <= expected | CONSTANTS, numbers_in(text) - expected - CONSTANTS


def all_tables() -> dict:
    return synthetic_tables(tuple({name for registry in (PROSE, ANSWERS) for declared in registry.values()
                                   for name in declared.needs}))  # fmt: skip


def test_every_section_of_the_chapter_opens_with_a_paragraph_and_the_prose_exceeds_600_words() -> None:
    tables = all_tables()
    paragraphs = section_paragraphs(tables)
    assert set(paragraphs) == {artifact.section for artifact in load_catalog().values()}
    assert all("Threats to validity" in text for text in paragraphs.values())
    closing = answers_tex(stated_answers(tables))
    assert len(plain_text(" ".join(paragraphs.values()) + closing).split()) >= 600


def test_the_theory_paragraph_states_only_numbers_recomputed_from_its_two_maps() -> None:
    tables = all_tables()
    clipped, ranged = tables[theory.KURTOSIS_MSE], tables[theory.KURTOSIS_RANGE]
    text = theory.theory_prose(tables)
    won = int((clipped["diff_db"] < 0).sum())
    assert f"pruning has the higher SQNR at {won} of {len(clipped)} grid points" in text
    expected = {f"{clipped['kurtosis'].min():.1f}", f"{clipped['kurtosis'].max():.1f}",
                str(clipped["bits"].min()), str(clipped["bits"].max()), str(won), str(len(clipped)),
                str(int((ranged["diff_db"] < 0).sum())), str(len(ranged)), f"{ranged['truncate_sigma'].max():g}"}
    assert_every_number_is(text, expected)


def test_the_models_paragraph_states_only_numbers_recomputed_from_the_summary_and_benchmarks() -> None:
    tables = all_tables()
    summary, benchmarks = tables[models.SUMMARY], tables[models.BENCHMARKS]
    parts = dict(zip(summary["part"], summary["parameters"], strict=True))
    total = parts["total"]
    text = models.models_prose(tables)
    assert f"hold {100 * (parts['attention'] + parts['mlp']) / total:.0f} \\% of them" in text
    expected = {str(summary["blocks"].iloc[0]), str(summary["linear_layers"].iloc[0]),
                str(summary["hidden_size"].iloc[0]), f"{total / 1e6:.1f}",
                f"{100 * (parts['attention'] + parts['mlp']) / total:.0f}",
                f"{100 * parts['embeddings'] / total:.0f}",
                *(str(n) for n in benchmarks.drop_duplicates("task")["questions"])}  # fmt: skip
    assert_every_number_is(text, expected)


def test_the_bounds_paragraph_states_only_numbers_recomputed_from_the_sweep() -> None:
    tables = all_tables()
    frame = tables[bounds.SWEEP]
    text = bounds.bounds_prose(tables)
    exact = frame[frame["kind"] == "exact"].set_index(["layer", "bits", "family"])["sqnr_db"]
    difference = exact.xs("quantization", level="family") - exact.xs("pruning", level="family")
    pruning = frame[frame["family"] == "pruning"].set_index(["layer", "bits", "method"])["sqnr_db"]
    quant = frame[frame["family"] == "quantization"].set_index(["layer", "bits", "method"])["sqnr_db"]
    gptq = (quant.xs("exact", level="method") - quant.xs("gptq", level="method")).median()
    sparsegpt = (pruning.xs("exact", level="method") - pruning.xs("sparsegpt", level="method")).median()
    assert f"GPTQ falls a median {gptq:.1f} dB short" in text and f"SparseGPT {sparsegpt:.1f} dB short" in text
    chunks = frame[frame["kind"] == "exact"]
    expected = {str(frame["layer"].nunique()), str(int((difference < 0).sum())), str(len(difference)),
                f"{gptq:.1f}", f"{sparsegpt:.1f}", str(chunks["optimal_chunks"].sum()),
                str(chunks["chunks"].sum())}
    for bits, rows in difference.groupby(level="bits"):
        expected |= {f"{rows.median():+.1f}", str(bits)}
    assert_every_number_is(text, expected)


def test_the_frontier_paragraph_states_only_numbers_recomputed_from_the_frontier_and_the_study() -> None:
    tables = all_tables()
    own = tables[frontier.FRONTIER]
    text = frontier.frontier_prose(tables)
    expected = {f"{own['base_perplexity'].iloc[0]:.2f}", str(own["tokens"].iloc[0])}
    for row in own.itertuples():
        expected |= numbers_in(spec_label(row.spec)) | {
            f"{row.bits_per_compressed_weight:.2f}", f"{row.perplexity:.2f}", f"{row.kl_to_reference_nats:.3f}",
            f"{row.kl_to_reference_nats_ci_low:.3f}", f"{row.kl_to_reference_nats_ci_high:.3f}"}
    study = removal.study_part(tables[removal.STUDY], "end_to_end")
    for row in study[study["spec"] == frontier.REFERENCE_QUANTIZER].head(1).itertuples():
        expected |= numbers_in(spec_label(row.spec)) | {
            f"{row.bits_per_linear_weight:.2f}", f"{row.perplexity:.2f}", f"{row.kl_to_reference_nats:.3f}",
            f"{row.error_ci_low:.3f}", f"{row.error_ci_high:.3f}"}
    assert_every_number_is(text, expected)


def width_numbers(frame) -> set[str]:
    """The numbers the width answer and paragraph may state, recomputed: per option its share and both KLs with
    their intervals, the counts of outcomes (intervals overlapping or not), the tokens and the largest size gap."""
    expected = {str(frame["tokens"].iloc[0])}
    outcomes = []
    for option, rows in frame.groupby("matched_to"):
        width = rows[rows["method"].str.startswith("shrink") & (rows["refit"] == True)].iloc[0]  # noqa: E712
        depth = rows[rows["method"] == "remove:bi"].iloc[0]
        expected |= {f"{100 * float(option.split(':')[0].split('=')[1]):.0f}",
                     f"{abs(depth['size_gap_bits']):.2f}"}  # fmt: skip
        for row in (width, depth):
            expected |= {f"{row[c]:.3f}" for c in ("kl_to_reference_nats", "kl_to_reference_nats_ci_low",
                                                   "kl_to_reference_nats_ci_high")}  # fmt: skip
        outcomes.append("less" if width["kl_to_reference_nats_ci_high"] < depth["kl_to_reference_nats_ci_low"] else
                        "more" if width["kl_to_reference_nats_ci_low"] > depth["kl_to_reference_nats_ci_high"] else
                        "tied")  # fmt: skip
    return expected | {str(len(outcomes))} | {str(outcomes.count(o)) for o in ("less", "more", "tied")}


def test_the_width_answer_and_paragraph_state_only_numbers_recomputed_from_the_width_table() -> None:
    tables = all_tables()
    expected = width_numbers(tables[width.WIDTH])
    assert_every_number_is(width.width_answer(tables), expected)
    assert_every_number_is(width.width_prose(tables), expected)


def test_the_plain_answers_state_only_numbers_recomputed_from_their_tables() -> None:
    tables = all_tables()
    frame = tables[weights.STUDY]
    pruning = int(frame["pruning_wins"].sum())
    counted = {str(len(frame) - pruning), str(len(frame)), str(pruning), str(frame["layer"].nunique())}
    assert_every_number_is(weights.tensor_answer(tables), {*(str(b) for b in frame["bits"].unique()), *counted})
    pairs = mixture.equal_size_pairs(tables)
    quantization = pairs[pairs["kind"] == "quantization"]
    counts = [str(int((quantization["outcome"] == o).sum())) for o in ("lower", "higher", "indistinguishable")]
    tokens = str(int(tables[mixture.MIXTURE]["tokens"].dropna().iloc[0]))
    assert_every_number_is(mixture.mixture_answer(tables), {*counts, str(len(quantization)), tokens})
    rows = removal.study_part(tables[removal.STUDY], "answer")
    row = rows[(rows["ordering"] == "bi") & (rows["mask_convention"] == "free") & (rows["view"] == "end_to_end")
               & (rows["removed"] == min(removal.ANSWER_LEVEL, rows["removed"].max()))].iloc[0]  # fmt: skip
    blocks = removal.study_part(tables[removal.STUDY], "units").query("unit == 'block'")["block"].nunique()
    series = "gptq_g128"
    columns = (f"equivalent_bits_{series}", f"break_even_base_{series}")
    expected = {str(int(row["removed"])), str(blocks), f"{100 * row['removed_fraction']:.0f}",
                str(int(row["tokens"])), f"{row['bits_per_decoder_parameter']:.1f}",
                *(f"{row[f'{column}{end}']:.1f}" for column in columns for end in ("", "_ci_low", "_ci_high"))}
    assert_every_number_is(removal.removal_answer(tables), expected)


def test_every_question_has_an_answer_from_the_default_run_even_without_the_opt_in_width_table() -> None:
    tables = all_tables()
    del tables[width.WIDTH]
    stated = dict(stated_answers(tables))
    assert len(stated) == len(ANSWERS) >= 4
    assert "Measured: removing" in stated[ANSWERS[width.SECTION].question]


def _study_end_to_end(rows: list[tuple]) -> pd.DataFrame:
    """A stacked removal study holding only an end_to_end part: (family, method, spec, removed fraction, blocks
    removed, KL, interval low, interval high)."""
    frame = pd.DataFrame(rows, columns=["family", "method", "spec", "removed_fraction", "removed",
                                        "kl_to_reference_nats", "error_ci_low", "error_ci_high"])  # fmt: skip
    return frame.assign(table="end_to_end", tokens=4088.0)


def test_width_against_depth_is_called_by_dominance_only() -> None:
    """A narrower model that removes as much as a BI removal and lies wholly below it damages less; one that a BI
    removal of at least its size lies wholly below damages more; one bracketed by both is unresolved."""
    study = _study_end_to_end([
        ("removal", "bi", "remove:blocks=1", 0.1, 1, 0.2, 0.18, 0.22),
        ("removal", "bi", "remove:blocks=1,2", 0.2, 2, 0.5, 0.45, 0.55),
        ("removal", "angular", "remove:blocks=3", 0.1, 1, 0.01, 0.009, 0.011),  # another ordering: not compared
        ("width", "shrink_a", "shrink:mlp=0.25", 0.15, np.nan, 0.10, 0.09, 0.11),
        ("width", "shrink_b", "shrink:mlp=0.5", 0.15, np.nan, 0.90, 0.80, 1.00),
        ("width", "shrink_c", "shrink:heads=0.34", 0.15, np.nan, 0.35, 0.30, 0.40),
    ])  # fmt: skip
    compared = width.width_against_depth_in_study(study)
    assert compared["outcome"].tolist() == ["less", "more", "unresolved"]
    assert compared[["below_blocks", "above_blocks"]].to_numpy().tolist() == [[1, 2]] * 3
    text = width.width_depth_answer({width.STUDY: study})
    assert text.startswith("It depends on the option: of 3 ways")
    expected = {"3", "1", "4088", "2", "25", "50", "34", "15.0", "10.0", "20.0",
                *(f"{value:.3f}" for value in (0.2, 0.18, 0.22, 0.5, 0.45, 0.55, 0.1, 0.09, 0.11, 0.9, 0.8, 1.0,
                                               0.35, 0.3, 0.4))}  # fmt: skip
    assert_every_number_is(text, expected)


def test_the_width_depth_answer_states_only_numbers_recomputed_from_the_study() -> None:
    tables = all_tables()
    compared = width.width_against_depth_in_study(tables[width.STUDY])
    expected = {str(len(compared)), str(int(compared["tokens"].iloc[0]))}
    expected |= {str(int((compared["outcome"] == o).sum())) for o in ("less", "more", "unresolved")}
    for row in compared.itertuples():
        expected |= {f"{100 * float(row.option.split(':')[0].split('=')[1]):.0f}",
                     f"{100 * row.removed_fraction:.1f}"}  # fmt: skip
        for side in ("", "below_", "above_"):
            expected |= {f"{getattr(row, side + key):.3f}" for key in ("kl", "low", "high")}
        for side in ("below", "above"):
            blocks, fraction = getattr(row, f"{side}_blocks"), getattr(row, f"{side}_fraction")
            if not np.isnan(blocks):
                expected |= {str(int(blocks)), f"{100 * fraction:.1f}"}
    assert_every_number_is(width.width_depth_answer(tables), expected)


def test_a_difference_is_named_only_when_its_interval_excludes_zero() -> None:
    assert interval_verdict(-0.3, -0.1, "lower", "higher", 4088) == "lower"
    assert interval_verdict(0.1, 0.3, "lower", "higher", 4088) == "higher"
    assert interval_verdict(-0.1, 0.3, "lower", "higher", 4088) == "indistinguishable at 4088 tokens"


def test_every_number_of_the_tensor_paragraph_is_recomputed_from_its_table() -> None:
    tables = all_tables()
    frame = tables[weights.STUDY]
    expected = {str(frame["layer"].nunique()),
                f"{frame[['kurtosis', 'diff_db']].corr(method='spearman').iloc[0, 1]:.2f}"}  # fmt: skip
    for bits, rows in frame.groupby("bits"):
        wins = ~rows["pruning_wins"].astype(bool)
        expected |= {str(bits), str(int(wins.sum())), str(len(rows)), f"{rows['diff_db'].median():+.1f}"}
    assert_every_number_is(weights.tensor_prose(tables), expected)


def test_every_number_of_the_mixture_paragraph_is_recomputed_from_its_table() -> None:
    tables = all_tables()
    frame = tables[mixture.MIXTURE]
    counts = frame["sensitivity"].value_counts()
    tokens = str(int(frame["tokens"].dropna().iloc[0]))
    expected = {str(counts.get("kl", 0)), str(counts.get("uniform", 0)), tokens}
    pairs = mixture.equal_size_pairs(tables)
    quantization = pairs[pairs["kind"] == "quantization"]
    expected |= {str(len(quantization)), *(f"{b:.3f}" for b in pairs["bits_per_linear_weight"])}
    expected |= {str(int((quantization["outcome"] == o).sum())) for o in ("lower", "higher", "indistinguishable")}
    by_size = pairs.groupby("bits_per_linear_weight")["outcome"].agg(lambda o: bool((o == "lower").all()))
    expected |= {str(int(by_size.sum())), str(len(by_size))}
    kl = frame[frame["sensitivity"] == "kl"].drop_duplicates("budget")
    without = frame[frame["sensitivity"] == "kl_without_removal"].drop_duplicates("budget")
    for row in kl.itertuples():
        expected |= {f"{row.budget:g}", *re.findall(r"\d+", str(row.removed_blocks or ""))}
        match = without[without["budget"] == row.budget]
        if len(match):
            expected |= {f"{row.kl_to_reference_nats:.3g}", f"{match['kl_to_reference_nats'].iloc[0]:.3g}"}
    rho, r, n = mixture.prediction_check(frame)
    expected |= {f"{rho:.2f}", f"{r:.2f}", str(n)}
    assert_every_number_is(mixture.mixture_prose(tables), expected)


def test_every_number_of_the_removal_paragraph_is_recomputed_from_the_study() -> None:
    tables = all_tables()
    frame = tables[removal.STUDY]
    answer = removal.study_part(frame, "answer")
    rows = answer[(answer["ordering"] == "bi") & (answer["mask_convention"] == "free")]
    level = min(removal.ANSWER_LEVEL, int(rows["removed"].max()))
    rows = rows[rows["removed"] == level]
    series = removal.answer_series(rows.set_index("view"))
    base = removal.study_part(frame, "base")
    expected = {str(level), str(removal.study_part(frame, "units").query("unit == 'block'")["block"].nunique()),
                str(int(base["tokens"].iloc[0])), f"{rows['bits_per_decoder_parameter'].iloc[0]:.2f}",
                f"{base['stored_bits_per_decoder_parameter'].iloc[0]:.2f}"}  # fmt: skip
    for row in rows.itertuples():
        expected.add(f"{getattr(row, f'equivalent_bits_{series}'):.1f}")
    end = rows[rows["view"] == "end_to_end"].iloc[0]
    for column, digits in ((f"equivalent_bits_{series}", 1), (f"break_even_base_{series}", 1),
                           ("best_kl_difference", 3)):  # fmt: skip
        expected |= {f"{end.get(column + suffix, np.nan):.{digits}f}" for suffix in ("", "_ci_low", "_ci_high")}
    expected.add(f"{end.get('best_kl_difference', np.nan):+.3f}")
    shares = removal.study_part(frame, "view_shares").set_index("view")
    expected.add(f"{100 * shares.loc['block', 'sink_share']:.0f}")
    points = removal.study_part(frame, "points")
    gptq = points[(points["term"] == "gptq:4:g128") & (points["view"] == "layer_energy")].iloc[0]
    expected |= {f"{10 * np.log10(gptq['error'] / gptq['error_in_sample']):.1f}", "4", "128"}
    assert_every_number_is(removal.removal_prose(tables), expected)
