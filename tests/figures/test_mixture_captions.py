"""The optimal-mixture captions compare like with like: an allocation against the uniform options of exactly its
size, computed from the table (hand-made rows with known answers)."""

from __future__ import annotations

import pandas as pd

from figures.catalog.mixture import MIXTURE, _removal_text, _verdict, equal_size_pairs


def _row(sensitivity: str, spec: str, bits: float, kl: float, removed: str = "") -> dict[str, object]:
    return {"sensitivity": sensitivity, "spec": spec, "budget": bits, "bits_per_weight": bits,
            "kl_to_reference_nats": kl, "removed_blocks": removed}  # fmt: skip


def test_the_verdict_counts_each_equal_size_pair_and_the_best_option_of_each_size() -> None:
    frame = pd.DataFrame([
        _row("kl", "", 2.0, 1.0, "3,7"), _row("kl", "", 3.0, 1.0), _row("kl", "", 2.5, 0.1),
        _row("uniform", "rtn:2:g128", 2.0, 5.0),  # the allocation wins against the quantization of its size
        _row("uniform", "magnitude:0.5+rtn:4:g128", 2.0, 0.5),  # ... but a joint option of that size beats it
        _row("uniform", "rtn:3:g128", 3.0, 0.5),  # the allocation loses
        _row("uniform", "rtn:4:g128", 4.0, 0.01),  # no allocation of this size: not compared
        _row("kl_without_removal", "", 2.0, 2.0),
    ])  # fmt: skip
    tables = {MIXTURE: frame}
    assert list(equal_size_pairs(tables)["spec"]) == ["rtn:2:g128", "magnitude:0.5+rtn:4:g128", "rtn:3:g128"]
    verdict = _verdict(tables)
    assert "that quantization at 1 of 2 sizes (2.000 bits per weight)" in verdict
    assert "every uniform menu option of the same size at 0 of 2 sizes (none)" in verdict
    removal = _removal_text(tables)
    assert "remove blocks at 2 (blocks 3,7)" in removal and "2: 1 vs 2" in removal


def test_no_equal_size_quantization_draws_no_verdict() -> None:
    frame = pd.DataFrame([_row("kl", "", 3.0, 1.0), _row("uniform", "magnitude:0.5", 3.0, 2.0)])
    assert "no verdict is drawn" in _verdict({MIXTURE: frame})
