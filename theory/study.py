"""Tidy result tables of the analytic comparison (Kuzmin et al., 2023, Sec. 3, Figs. 1-3).

* :func:`format_sqnr_table`: SQNR of every registered format on one distribution, plus magnitude
  pruning at the equal-compression sparsity of each distinct bits-per-weight value.
* :func:`kurtosis_bits_table`: for each (kurtosis, bits), INT-b vs pruning at equal compression on a
  (optionally truncated) Student-t; ``diff_db = quant - prune`` and ``pruning_wins = diff_db < 0``.
* :func:`tensor_sqnr_table`: the same comparison on the empirical distribution of a weight tensor.

Clip rules for the integer grid: ``"mse"`` (MSE-optimal clipping, the paper's range estimator) or
``"range"`` (the clip is the largest |w| the distribution can take: the truncation point, or a
tensor's max |w|; the paper's Fig. 2 axis "clipping range").
Every row records the mask convention as the JSON of :meth:`theory.accounting.Convention.as_dict`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from theory import accounting
from theory.accounting import PAPER_CONVENTION, Convention
from theory.distributions import Distribution, Empirical, StudentT, TruncatedStudentT, make_distribution
from theory.errors import PvqError, choose
from theory.formats import FORMATS, get_format
from theory.sqnr import DEFAULT_BLOCKS, format_fit, format_sqnr_db, pruning_sqnr_db

CLIP_RULES = ("mse", "range")
DEFAULT_BITS = tuple(range(2, 9))
DEFAULT_KURTOSES = tuple(float(k) for k in 3.0 + np.geomspace(0.1, 300.0, 20))

FORMAT_COLUMNS = ["distribution", "method", "family", "bits", "bits_per_weight", "sparsity", "sqnr_db",
                  "sqnr_se_db", "clip_sigma", "convention", "format"]
LINE_FAMILIES = ("int", "int-asym")  # formats drawn as one line over bit-widths: method = family
COMPARISON_COLUMNS = ["distribution", "kurtosis", "bits", "bits_per_weight", "sparsity", "quant_sqnr_db",
                      "prune_sqnr_db", "diff_db", "pruning_wins", "clip_sigma", "convention", "grid",
                      "clip_rule", "prune_bits_per_weight"]


def convention_json(convention: Convention) -> str:
    """The convention as the JSON string stored in every result row."""
    return json.dumps(convention.as_dict(), sort_keys=True)


def range_clip(dist: Distribution) -> float:
    """The largest |w| of a bounded distribution, in σ units (the ``"range"`` clip rule)."""
    top = dist.abs_quantile(1.0)
    if not math.isfinite(top):
        raise PvqError("the 'range' clip rule needs a bounded distribution: pass a truncation point or a tensor")
    return top / dist.std()


def compare_at_equal_compression(dist: Distribution, bits: int, convention: Convention = PAPER_CONVENTION,
                                 symmetric: bool = True, clip_rule: str = "mse") -> dict[str, Any]:
    """INT-b (per-tensor scale) vs magnitude pruning at the sparsity of equal size under ``convention``.

    The sparsity is :func:`theory.accounting.equal_compression_sparsity` of INT-b's bits per weight
    (``1 - b/16`` with the paper's free mask).
    """
    choose("clip rule", clip_rule, CLIP_RULES)
    accounting.check_bits(bits)
    fmt = get_format(f"int{bits}" if symmetric else f"int{bits}_asym")
    fit = format_fit(dist, fmt, clip=None if clip_rule == "mse" else range_clip(dist))
    sparsity = accounting.equal_compression_sparsity(fmt.bits_per_weight, convention)
    prune_db = pruning_sqnr_db(dist, sparsity)
    return {
        "distribution": dist.name,
        "kurtosis": dist.kurtosis(),
        "bits": bits,
        "bits_per_weight": fmt.bits_per_weight,
        "sparsity": sparsity,
        "quant_sqnr_db": fit.sqnr_db,
        "prune_sqnr_db": prune_db,
        "diff_db": fit.sqnr_db - prune_db,
        "pruning_wins": bool(fit.sqnr_db < prune_db),
        "clip_sigma": fit.clip_sigma,
        "convention": convention_json(convention),
        "grid": "signed" if symmetric else "zero-point",
        "clip_rule": clip_rule,
        "prune_bits_per_weight": accounting.sparse_bits_per_weight(sparsity, convention),
    }


def _pruning_points(bits_per_weight: Iterable[tuple[float, float]], convention: Convention
                    ) -> list[tuple[float, float]]:
    """``(matched element bits, sparsity)`` for each distinct bits-per-weight value (one point for N:M)."""
    if convention.mask_encoding == "nm":
        return [(math.nan, 1.0 - convention.n / convention.m)]
    points: dict[float, tuple[float, float]] = {}
    for element_bits, bpw in sorted(bits_per_weight, key=lambda pair: (pair[1], pair[0])):
        if bpw not in points:
            points[bpw] = (element_bits, accounting.equal_compression_sparsity(bpw, convention))
    return list(points.values())


def format_sqnr_table(distribution: str | Distribution = "gaussian", convention: Convention = PAPER_CONVENTION,
                      n_blocks: int = DEFAULT_BLOCKS, seed: int = 0) -> pd.DataFrame:
    """One row per registered format (SQNR, its standard error, the clip) and one pruning row per
    distinct bits per weight at the equal-compression sparsity. Per-tensor grids are exact
    (``sqnr_se_db`` 0); block formats are Monte Carlo over ``n_blocks`` blocks drawn with ``seed``.

    ``method`` names a line of the SQNR-vs-bits figure (``"int"``, ``"int-asym"``, ``"magnitude"``,
    or the format itself for single-width formats); ``format`` is the registry name (``"int4"``).
    """
    dist = make_distribution(distribution) if isinstance(distribution, str) else distribution
    rows = []
    for fmt in FORMATS.values():
        value, error, clip = format_sqnr_db(dist, fmt, n_blocks, seed)
        method = fmt.family if fmt.family in LINE_FAMILIES else fmt.name
        rows.append({"method": method, "format": fmt.name, "family": "quantization", "bits": fmt.element_bits,
                     "bits_per_weight": fmt.bits_per_weight, "sparsity": math.nan, "sqnr_db": value,
                     "sqnr_se_db": error, "clip_sigma": clip})
    matched = [(fmt.element_bits, fmt.bits_per_weight) for fmt in FORMATS.values()]
    for element_bits, sparsity in _pruning_points(matched, convention):
        rows.append({"method": "magnitude", "format": "magnitude", "family": "pruning", "bits": element_bits,
                     "bits_per_weight": accounting.sparse_bits_per_weight(sparsity, convention),
                     "sparsity": sparsity, "sqnr_db": pruning_sqnr_db(dist, sparsity), "sqnr_se_db": 0.0,
                     "clip_sigma": math.nan})
    table = pd.DataFrame(rows)
    table.insert(0, "distribution", dist.name)
    table["convention"] = convention_json(convention)
    return table[FORMAT_COLUMNS]


def kurtosis_bits_table(kurtoses: Iterable[float] = DEFAULT_KURTOSES, bits: Iterable[int] = DEFAULT_BITS,
                        convention: Convention = PAPER_CONVENTION, truncate: float | None = None,
                        symmetric: bool = True, clip_rule: str = "mse") -> pd.DataFrame:
    """The kurtosis × bits map of ``quant - prune`` SQNR (dB) on a unit-variance Student-t.

    ``kurtosis`` is the kurtosis of the distribution compressed (lower than ``kurtosis_parameter``
    once truncated to [-truncate, truncate] σ).
    """
    rows = []
    for kurtosis in kurtoses:
        dist = StudentT.from_kurtosis(kurtosis) if truncate is None else TruncatedStudentT(kurtosis, truncate)
        for b in bits:
            row = compare_at_equal_compression(dist, b, convention, symmetric, clip_rule)
            rows.append({**row, "kurtosis_parameter": float(kurtosis),
                         "truncate_sigma": math.nan if truncate is None else float(truncate)})
    return pd.DataFrame(rows, columns=[*COMPARISON_COLUMNS, "kurtosis_parameter", "truncate_sigma"])


def tensor_sqnr_table(weights: np.ndarray, bits_list: Iterable[int] = DEFAULT_BITS,
                      convention: Convention = PAPER_CONVENTION, symmetric: bool = True,
                      clip_rule: str = "mse") -> pd.DataFrame:
    """INT-b weight SQNR vs pruning SQNR at equal compression on one tensor, with its kurtosis (paper Fig. 3).

    The tensor's empirical distribution is integrated exactly (sums over its sorted entries), so the
    SQNR equals that of quantizing and pruning the tensor itself.
    """
    dist = Empirical(weights)
    rows = [compare_at_equal_compression(dist, b, convention, symmetric, clip_rule) for b in bits_list]
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS).assign(numel=dist.size)
