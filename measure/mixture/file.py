"""The allocation file: one row per linear layer, applied as a spec of per-layer terms.

Format: a parquet table with a JSON provenance sidecar (:func:`measure.records.store.write_table`, written
atomically),
columns :data:`measure.mixture.solve.ALLOCATION_COLUMNS`; :func:`read_allocation` also reads the same columns
from a CSV file (hand-written allocations). Only ``layer`` and ``option`` say what is applied;
``bits_per_linear_weight`` (bits per weight of the layer) and ``parameters`` are checked against the model
when applied (:func:`check_allocation`), ``predicted_damage`` is informative. A ``keep`` row leaves its layer at
16 bits. The spec is ``OPTION@layer=NAME`` per compressed layer, joined by ``+`` (:func:`allocation_spec`): one
layer-sequential pass like any spec. ``remove`` rows remove their blocks: every linear of such a block must say
``remove``, and the spec ends with ``remove:blocks=i,j,...`` (after the per-layer terms, which name the layers
of the model as given), so the result reloads with plain ``from_pretrained``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from measure.compress.spec import LAYER_SCOPE, Spec, parse_spec
from measure.mixture.menu import KEEP, REMOVE, parse_menu
from measure.mixture.solve import ALLOCATION_COLUMNS, Allocation
from measure.models.architecture import describe
from measure.records.store import write_table
from theory.errors import PvqError

REQUIRED_COLUMNS = ("layer", "option", "bits_per_linear_weight", "parameters")
SUFFIXES = (".parquet", ".csv")


def write_allocation(allocation: Allocation, path: str | Path, provenance: dict[str, Any]) -> Path:
    """Write the allocation table and its provenance (summary included) atomically; returns the path."""
    path = Path(path)
    if path.suffix != ".parquet":
        raise PvqError(f"write the allocation to a .parquet file (got {path.name!r})")
    provenance = {**provenance, "allocation": allocation.summary}
    return write_table(allocation.table[ALLOCATION_COLUMNS], path, provenance)


def is_allocation_file(text: str) -> bool:
    """True when ``text`` names a file with an allocation suffix (.parquet, .csv) rather than a spec."""
    return Path(text).suffix in SUFFIXES


def read_allocation(path: str | Path) -> pd.DataFrame:
    """The allocation table of ``path`` (.parquet or .csv), checked: required columns, one row per layer, known
    options, finite non-negative bits and positive integer parameters. PvqError names what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise PvqError(f"allocation file {path} does not exist; write one with `pvq allocate --out FILE`")
    try:
        table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as error:  # any reader failure means a malformed file
        raise PvqError(f"allocation file {path} cannot be read as {path.suffix[1:]}: {error}") from None
    missing = [column for column in REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        raise PvqError(
            f"allocation file {path} lacks column(s) {', '.join(missing)}; it needs {', '.join(REQUIRED_COLUMNS)}"
        )
    if table.empty:
        raise PvqError(f"allocation file {path} has no rows")
    duplicated = table["layer"][table["layer"].duplicated()].tolist()
    if duplicated:
        raise PvqError(f"allocation file {path} names layer(s) twice: {', '.join(map(str, duplicated[:3]))}")
    parse_menu(",".join(dict.fromkeys(str(option) for option in table["option"])))
    bits = pd.to_numeric(table["bits_per_linear_weight"], errors="coerce")
    parameters = pd.to_numeric(table["parameters"], errors="coerce")
    if not bits.map(lambda b: math.isfinite(b) and b >= 0).all():
        raise PvqError(
            f"allocation file {path}: bits_per_linear_weight must be finite and non-negative in every row"
        )
    if not parameters.map(lambda p: math.isfinite(p) and p > 0 and p == int(p)).all():
        raise PvqError(f"allocation file {path}: parameters must be positive integers in every row")
    return table.assign(layer=table["layer"].astype(str), option=table["option"].astype(str))


def allocation_spec(table: pd.DataFrame) -> Spec:
    """The spec of per-layer terms (``OPTION@layer=NAME`` joined by ``+``) that applies the allocation, then
    ``remove:blocks=...`` for the blocks whose layers say ``remove`` (the table needs a ``block`` column then)."""
    layered = table[~table["option"].isin((KEEP, REMOVE))]
    terms = [f"{row.option}@{LAYER_SCOPE}{row.layer}" for row in layered.itertuples()]
    removed = table[table["option"] == REMOVE]
    if not removed.empty:
        if "block" not in table.columns:
            raise PvqError(f"an allocation with {REMOVE!r} rows needs a 'block' column naming each layer's block")
        terms.append(f"remove:blocks={','.join(str(int(b)) for b in sorted(set(removed['block'])))}")
    if not terms:
        raise PvqError("the allocation keeps every layer at 16 bits; there is nothing to compress")
    return parse_spec("+".join(terms))


def check_allocation(table: pd.DataFrame, spec: Spec, model: Any) -> None:
    """PvqError unless every layer of the table exists in ``model`` with the recorded parameter count and the
    option's bits per weight on it equal the recorded ones (to 1e-9)."""

    arch = describe(model)
    refs = {ref.name: ref for ref in arch.linears}
    lacking = [layer for layer in table["layer"] if layer not in refs]
    if lacking:
        raise PvqError(
            f"the allocation names {len(lacking)} layer(s) the model lacks: {', '.join(lacking[:3])}; "
            f"layers of this model look like {', '.join(list(refs)[:2])} (see `pvq info MODEL --linears`)"
        )
    removing = table[table["option"] == REMOVE]
    for block in sorted(set(removing["block"].astype(int)) if not removing.empty else ()):
        linears = {ref.name for ref in arch.linears if ref.block_index == block}
        rows = table[table["layer"].isin(linears)]
        wrong = rows[(rows["option"] != REMOVE) | (rows["block"].astype(int) != block)]["layer"].tolist()
        if wrong or len(rows) != len(linears):
            raise PvqError(
                f"the allocation removes block {block} but does not say {REMOVE!r} for every one of its "
                f"{len(linears)} linear layers ({', '.join(wrong[:2]) or 'some are missing'}); a block goes whole"
            )
    for row in table.itertuples():
        ref = refs[row.layer]
        size = ref.out_features * ref.in_features
        step = spec.step_for(ref)
        bits = 0.0 if row.option == REMOVE else 16.0 if step is None else step.bits_per_weight(ref)
        if int(row.parameters) != size or not math.isclose(bits, float(row.bits_per_linear_weight), abs_tol=1e-9):
            raise PvqError(
                f"allocation row {row.layer}: the file says {int(row.parameters)} parameters at "
                f"{float(row.bits_per_linear_weight):g} bits, the model's layer has {size} at {bits:g} "
                f"for {row.option!r}"
            )


def load_allocation_spec(path: str | Path, model: Any) -> Spec:
    """Read, check against ``model`` and turn into a spec the allocation file at ``path`` (nothing is applied)."""
    table = read_allocation(path)
    spec = allocation_spec(table)
    check_allocation(table, spec, model)
    return spec
