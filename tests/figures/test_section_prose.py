"""Every section paragraph of the chapter is computed from the tables: numbers recomputed here from the same
synthetic tables, and the phrase structure that carries them."""

from __future__ import annotations

import numpy as np

from figures.answers import PROSE, section_paragraphs
from figures.catalog import mixture, removal, weights
from figures.registry import synthetic_tables


def test_each_thesis_question_section_has_a_paragraph_with_its_scale_and_threats() -> None:
    tables = synthetic_tables(tuple({name for declared in PROSE.values() for name in declared.needs}))
    paragraphs = section_paragraphs(tables)
    assert set(paragraphs) == {removal.SECTION, mixture.SECTION, weights.SECTION}
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
    assert mixture._verdict(tables) in text
    frame = tables[weights.STUDY]
    tensor = weights.tensor_prose(tables)
    for bits, rows in frame.groupby("bits"):
        favour = int((~rows["pruning_wins"]).sum())
        assert f"at {bits} bits quantization has the higher weight SQNR for {favour} of {len(rows)}" in tensor
    rho = frame[["kurtosis", "diff_db"]].corr(method="spearman").iloc[0, 1]
    assert f"is {rho:.2f}." in tensor
