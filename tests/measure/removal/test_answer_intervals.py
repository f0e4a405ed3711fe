"""The removal answer's intervals: paired removal-vs-method differences, equivalent bits carried through a curve,
the break-even base and its verdicts (hand-made levels and points with known answers)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from measure.evaluation.intervals import token_blocks
from measure.removal.answer import EndToEndTokens, answer_table, break_even, removal_term


def _points(kl: dict[str, float]) -> pd.DataFrame:
    rows = [{"view": "end_to_end", "series": "rtn_g128", "family": "quantization", "term": term,
             "mask_convention": None, "bits_per_decoder_parameter": bits, "bits_per_linear_weight": bits,
             "error": error,
             "quality_db": -10 * math.log10(error), "perplexity": 20.0, "mixed": False,
             "removed_fraction": math.nan, "size_gap_bits": math.nan}
            for term, (bits, error) in {"rtn:3": (3.0, kl["rtn:3"]), "rtn:4": (4.0, kl["rtn:4"])}.items()]
    return pd.DataFrame(rows)


def _levels(kl: float, low: float, high: float, bits: float = 3.5) -> pd.DataFrame:
    return pd.DataFrame([{"ordering": "bi", "removed": 1, "blocks": "2", "removed_fraction": 1 - bits / 16,
                          "bits_per_decoder_parameter": bits, "bits_per_linear_weight": bits,
                          "removal_error_end_to_end": kl,
                          "error_ci_low": low, "error_ci_high": high, "tokens": 1024}])  # fmt: skip


def _tokens(removal: np.ndarray, rtn3: np.ndarray, rtn4: np.ndarray) -> EndToEndTokens:
    tokens = EndToEndTokens(blocks=token_blocks(np.repeat(np.arange(2), 512)))
    tokens.kl = {removal_term("2"): removal, "rtn:3": rtn3, "rtn:4": rtn4}
    return tokens


def test_the_paired_difference_to_an_interpolated_method_is_indistinguishable_when_it_holds_zero() -> None:
    rng = np.random.default_rng(0)
    shared = rng.gamma(2.0, 0.1, size=1024)
    rtn3, rtn4 = shared * 1.2, shared * 0.8  # mean at 3.5 bits: shared
    removal = shared + rng.normal(0, 0.01, size=1024)  # the same model up to noise
    answer = answer_table(_levels(float(removal.mean()), 0.19, 0.21), _points(
        {"rtn:3": float(rtn3.mean()), "rtn:4": float(rtn4.mean())}), ["end_to_end"], ["free"],
        _tokens(removal, rtn3, rtn4))  # fmt: skip
    row = answer.iloc[0]
    assert row["best_kl_difference_ci_low"] < 0 < row["best_kl_difference_ci_high"]
    assert row["best_outcome"] == "indistinguishable"


def test_a_clearly_worse_removal_is_called_worse() -> None:
    rng = np.random.default_rng(1)
    shared = rng.gamma(2.0, 0.1, size=1024)
    removal = shared * 3
    answer = answer_table(_levels(float(removal.mean()), 0.5, 0.7), _points(
        {"rtn:3": float(shared.mean()), "rtn:4": float(shared.mean() / 2)}), ["end_to_end"], ["free"],
        _tokens(removal, shared, shared / 2))  # fmt: skip
    row = answer.iloc[0]
    assert row["best_kl_difference_ci_low"] > 0 and row["best_outcome"] == "removal worse"
    # removal worse than RTN at its smallest size measured: censored, B* at most 3 / (1 − f)
    assert row["equivalent_bits_rtn_g128_censored"] == "below"


def test_equivalent_bits_carry_the_removal_interval_through_the_curve() -> None:
    points = _points({"rtn:3": 0.1, "rtn:4": 0.01})  # 10 dB to 20 dB between 3 and 4 bits
    answer = answer_table(_levels(10 ** -1.5, 10 ** -1.6, 10 ** -1.4), points, ["end_to_end"], ["free"])
    row = answer.iloc[0]
    assert row["equivalent_bits_rtn_g128"] == pytest.approx(3.5)
    assert row["equivalent_bits_rtn_g128_ci_low"] == pytest.approx(3.4)
    assert row["equivalent_bits_rtn_g128_ci_high"] == pytest.approx(3.6)
    keep = 3.5 / 16
    assert row["break_even_base_rtn_g128"] == pytest.approx(3.5 / keep)


def test_break_even_base_verdicts_at_16_bits_and_at_the_stored_size() -> None:
    found = break_even("gptq", 4.0, 3.9, 4.1, "", 0.2, 5.0)  # B* = 5 (4.875..5.125)
    assert found["break_even_base_gptq"] == pytest.approx(5.0)
    assert found["verdict_base16_gptq"] == "removal worse"
    assert found["verdict_stored_gptq"] == "indistinguishable"
    assert break_even("gptq", 4.0, 3.9, 4.1, "", 0.2, 4.0)["verdict_stored_gptq"] == "removal better"
    assert break_even("gptq", 8.0, 8.0, 8.0, "above", 0.2, None)["break_even_base_gptq_ci_high"] == math.inf
    assert break_even("gptq", 4.0, 3.9, 4.1, "", 0.2, None)["verdict_stored_gptq"] == ""
