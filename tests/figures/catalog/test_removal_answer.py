"""The removal answer sentence calls removal better or worse only when the interval of the difference excludes
zero (hand-made answer rows)."""

from __future__ import annotations

import pandas as pd

from figures.catalog import removal


def _rows(difference: tuple[float, float, float], outcome: str, verdict16: str, verdict_stored: str
          ) -> pd.DataFrame:  # fmt: skip
    common = {"ordering": "bi", "mask_convention": "free", "removed": 4, "bits_per_decoder_parameter": 13.87,
              "stored_bits_per_decoder_parameter": 5.0}  # fmt: skip
    end = {**common, "view": "end_to_end", "tokens": 4088, "equivalent_bits_gptq_g128": 4.4,
           "equivalent_bits_gptq_g128_censored": "", "equivalent_bits_gptq_g128_ci_low": 4.2,
           "equivalent_bits_gptq_g128_ci_high": 4.6, "break_even_base_gptq_g128": 5.07,
           "break_even_base_gptq_g128_ci_low": 4.84, "break_even_base_gptq_g128_ci_high": 5.3,
           "verdict_base16_gptq_g128": verdict16, "verdict_stored_gptq_g128": verdict_stored,
           "best_series": "gptq_g128", "best_kl_difference": difference[0],
           "best_kl_difference_ci_low": difference[1], "best_kl_difference_ci_high": difference[2],
           "best_outcome": outcome}  # fmt: skip
    block = {**common, "view": "block", "equivalent_bits_gptq_g128": 5.1, "equivalent_bits_gptq_g128_censored": ""}
    return pd.DataFrame([block, end])


def test_an_interval_holding_zero_is_indistinguishable_and_one_excluding_it_names_the_winner() -> None:
    tied = removal._answer_sentence(_rows((0.01, -0.05, 0.07), "indistinguishable", "removal worse",
                                          "indistinguishable"))  # fmt: skip
    assert "Answer on 4088 held-out tokens" in tied
    assert "4.4-bit GPTQ (g128) end to end (95 \\% interval 4.2--4.6)" in tied
    assert "5.1-bit GPTQ (g128) in the block view" in tied
    assert "fewer than $B^* = 5.1$ bits per parameter end to end (95 \\% interval 4.8--5.3)" in tied
    assert "at a 16-bit base it is worse, and at the model's stored 5.00 bits indistinguishable" in tied
    assert "= +0.010 nats/token (95 \\% interval -0.050--0.070): indistinguishable." in tied
    worse = removal._answer_sentence(_rows((0.2, 0.1, 0.3), "removal worse", "removal worse", "removal worse"))
    assert ": removal worse." in worse and "indistinguishable" not in worse
