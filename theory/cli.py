"""`pvq theory`: Analytic SQNR of quantization vs magnitude pruning on a distribution, at equal compression.

One point: ``pvq theory --dist student-t --kurtosis 6 --bits 4 --json`` prints one JSON object.
Tables for the figures: ``pvq theory --tables DIR`` writes ``theory_formats_<dist>.parquet`` (every
format and the equal-compression pruning rows) and ``theory_kurtosis_bits.parquet`` (the kurtosis ×
bits difference map), each with a JSON provenance sidecar.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from theory.accounting import MASK_ENCODINGS, Convention
from theory.errors import PvqError

HELP = "Analytic SQNR of quantization vs magnitude pruning on a distribution, at equal compression."

GRID_CONVENTION = {
    "signed": "codes {-2^(b-1)..2^(b-1)-1}, s = clip/(2^(b-1)-1); MSE over the full grid (extra negative level "
              "included); clip in sigma units (Kuzmin et al. 2023 code)",
    "zero-point": "codes 0..2^b-1, value (q - z)*s with integer z; clip is the half-range (2^b-1)*s/2 "
                  "in sigma units",
}


def _floats(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from error


def _nm(text: str) -> tuple[int, int]:
    try:
        n, m = (int(part) for part in text.split(":"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected N:M such as 2:4, got {text!r}") from error
    return n, m


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``pvq theory`` (names are checked by the library, so parsing imports nothing heavy)."""
    parser.add_argument("--dist", default="gaussian", help="gaussian, laplace or student-t")
    parser.add_argument("--kurtosis", type=float, help="Student-t kurtosis (Pearson, > 3)")
    parser.add_argument("--truncate", type=float, help="truncate to [-T, T] (σ units of the untruncated law)")
    parser.add_argument("--bits", type=int, help="integer bit-width b (2..8) of the quantizer")
    parser.add_argument("--asymmetric", action="store_true", help="zero-point grid instead of the signed grid")
    parser.add_argument("--clip-rule", default="mse",
                        help="mse: MSE-optimal clip; range: clip at the largest |w| (bounded laws only)")
    parser.add_argument("--mask-encoding", choices=MASK_ENCODINGS, default="none",
                        help="how pruning pays for its mask (none = the paper's b/16 convention)")
    parser.add_argument("--index-bits", type=int, default=16, help="bits per index (index encoding)")
    parser.add_argument("--nm", type=_nm, default=(2, 4), help="N:M pattern (nm encoding), e.g. 2:4")
    parser.add_argument("--base-bits", type=int, default=16, help="bits of a dense weight (the baseline)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--tables", type=Path, metavar="DIR", help="write the format and kurtosis×bits tables")
    parser.add_argument("--kurtoses", type=_floats, help="kurtosis grid for --tables (comma-separated)")
    parser.add_argument("--blocks", type=int, default=1 << 15, help="Monte Carlo blocks for block formats")
    parser.add_argument("--seed", type=int, default=0, help="Monte Carlo seed")


def _convention(args: argparse.Namespace) -> Convention:
    n, m = args.nm
    return Convention(mask_encoding=args.mask_encoding, base_bits=args.base_bits, index_bits=args.index_bits,
                      n=n, m=m)


def point_result(args: argparse.Namespace) -> dict[str, Any]:
    """The single-point comparison as a JSON-ready dict."""
    from theory.distributions import make_distribution
    from theory.study import compare_at_equal_compression

    dist = make_distribution(args.dist, kurtosis=args.kurtosis, truncate=args.truncate)
    convention = _convention(args)
    row = compare_at_equal_compression(dist, args.bits, convention, not args.asymmetric, args.clip_rule)
    return {
        **row,
        "kurtosis_parameter": args.kurtosis,
        "truncate_sigma": args.truncate,
        "clip": row["clip_sigma"],
        "convention": convention.as_dict(),
        "grid_convention": GRID_CONVENTION[row["grid"]],
    }


def _print_table(result: dict[str, Any]) -> None:
    width = max(len(key) for key in result)
    for key, value in result.items():
        shown = json.dumps(value) if isinstance(value, dict) else (f"{value:.4f}" if isinstance(value, float)
                                                                    and math.isfinite(value) else value)
        print(f"{key.ljust(width)}  {shown}")


def write_tables(args: argparse.Namespace) -> list[Path]:
    """Write the format table and the kurtosis × bits table under ``args.tables``."""
    from measure.records.provenance import collect
    from measure.records.store import write_table
    from theory.distributions import make_distribution
    from theory.study import DEFAULT_KURTOSES, format_sqnr_table, kurtosis_bits_table

    convention = _convention(args)
    dist = make_distribution(args.dist, kurtosis=args.kurtosis, truncate=args.truncate)
    kurtoses = args.kurtoses or DEFAULT_KURTOSES
    formats = format_sqnr_table(dist, convention, n_blocks=args.blocks, seed=args.seed)
    study = kurtosis_bits_table(kurtoses, convention=convention, truncate=args.truncate,
                                symmetric=not args.asymmetric, clip_rule=args.clip_rule)
    fields = {"command": "pvq theory", "convention": convention.as_dict(), "seed": args.seed,
              "n_blocks": args.blocks, "truncate": args.truncate, "clip_rule": args.clip_rule}
    return [
        write_table(formats, args.tables / f"theory_formats_{dist.name}.parquet",
                    collect(**fields, table="formats", distribution=dist.describe())),
        write_table(study, args.tables / "theory_kurtosis_bits.parquet",
                    collect(**fields, table="kurtosis_bits", kurtoses=list(kurtoses))),
    ]


def run(args: argparse.Namespace) -> int:
    """Print one comparison (``--bits``) or write the tables (``--tables``)."""
    if args.tables is not None:
        for path in write_tables(args):
            print(path)
        return 0
    if args.bits is None:
        raise PvqError("give --bits B (2..8) for one comparison, or --tables DIR to write the study tables")
    result = point_result(args)
    if args.json:
        print(json.dumps(result, sort_keys=False))
    else:
        _print_table(result)
    return 0
