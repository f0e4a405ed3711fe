"""The optimal-mixture captions compare like with like: an allocation against the uniform options of exactly its
size, computed from the table (hand-made rows with known answers)."""

from __future__ import annotations

import math

import pandas as pd

from figures.catalog.mixture import MIXTURE, _removal_text, _verdict, equal_size_pairs


def _row(sensitivity: str, spec: str, bits: float, kl: float, removed: str = "",
         interval: tuple[float, float] = (math.nan, math.nan)) -> dict[str, object]:  # fmt: skip
    """A table row; ``interval``: the paired interval of allocation − this uniform option (uniform rows)."""
    difference = (interval[0] + interval[1]) / 2
    return {"sensitivity": sensitivity, "spec": spec, "budget": bits, "bits_per_linear_weight": bits,
            "kl_to_reference_nats": kl, "removed_blocks": removed, "paired_kl_difference": difference,
            "paired_kl_difference_ci_low": interval[0], "paired_kl_difference_ci_high": interval[1],
            "tokens": 4088}  # fmt: skip


def test_the_verdict_counts_each_equal_size_pair_and_the_best_option_of_each_size() -> None:
    frame = pd.DataFrame([
        _row("kl", "", 2.0, 1.0, "3,7"), _row("kl", "", 3.0, 1.0), _row("kl", "", 2.5, 0.1),
        _row("uniform", "rtn:2:g128", 2.0, 5.0, interval=(-4.5, -3.5)),  # the allocation wins, resolved
        _row("uniform", "magnitude:0.5+rtn:4:g128", 2.0, 0.5, interval=(0.3, 0.7)),  # a joint option beats it
        _row("uniform", "rtn:3:g128", 3.0, 0.5, interval=(0.2, 0.8)),  # the allocation loses, resolved
        _row("uniform", "rtn:4:g128", 4.0, 0.01),  # no allocation of this size: not compared
        _row("kl_without_removal", "", 2.0, 2.0),
    ])  # fmt: skip
    tables = {MIXTURE: frame}
    assert list(equal_size_pairs(tables)["spec"]) == ["rtn:2:g128", "magnitude:0.5+rtn:4:g128", "rtn:3:g128"]
    verdict = _verdict(tables)
    assert "that quantization at 1 of 2 sizes (2.000 bits per weight), higher KL at 1 (3.000)" in verdict
    assert "indistinguishable at 0 (none" in verdict and "over 4088 held-out tokens" in verdict
    assert "resolved by the intervals, at 0 of 2 sizes (none)" in verdict
    removal = _removal_text(tables)
    assert "remove blocks at 2 (blocks 3,7)" in removal and "2: 1 vs 2" in removal


def test_a_difference_whose_interval_contains_zero_is_called_indistinguishable() -> None:
    frame = pd.DataFrame([
        _row("kl", "", 2.0, 1.0), _row("kl", "", 3.0, 0.4),
        _row("uniform", "rtn:2:g128", 2.0, 1.1, interval=(-0.3, 0.1)),  # lower mean, interval holds 0
        _row("uniform", "rtn:3:g128", 3.0, 0.5, interval=(-0.2, -0.01)),  # lower, resolved
    ])  # fmt: skip
    verdict = _verdict({MIXTURE: frame})
    assert "that quantization at 1 of 2 sizes (3.000 bits per weight), higher KL at 0 (none)" in verdict
    assert "indistinguishable at 1 (2.000;" in verdict
    assert list(equal_size_pairs({MIXTURE: frame})["outcome"]) == ["indistinguishable", "lower"]


def test_no_equal_size_quantization_draws_no_verdict() -> None:
    frame = pd.DataFrame([_row("kl", "", 3.0, 1.0), _row("uniform", "magnitude:0.5", 3.0, 2.0)])
    assert "no verdict is drawn" in _verdict({MIXTURE: frame})
