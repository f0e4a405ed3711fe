"""The joint-frontier grid as compression spec strings (pure text, no model): pruning × quantization and block
removal × quantization, each point once.

``sparsegpt:<s>+gptq:<b>:g<g>`` prunes with SparseGPT at sparsity s (or an N:M pattern such as 2:4) and quantizes
the kept weights; ``remove:bi:<n>+gptq:<b>:g<g>`` removes the n blocks of lowest Block Influence and quantizes
the shortened model. s = 0 and n = 0 give the plain quantizer spec. :mod:`measure.mixture.joint_frontier` measures
them.
"""

from __future__ import annotations

from collections.abc import Sequence

from theory.errors import PvqError

SPARSITIES: tuple[float | str, ...] = (0.0, 0.25, 0.5, 0.625, 0.75, "2:4")
"""SparseGPT settings of the grid (unstructured sparsities and the 2:4 pattern)."""
JOINT_BITS = (2, 3, 4, 8)
"""GPTQ bit widths after pruning."""
REMOVED_BLOCKS = (0, 2, 4, 6)
"""Blocks removed by Block Influence."""
REMOVAL_BITS = (3, 4, 8)
"""GPTQ bit widths after removal."""
GROUP = 128
"""Inputs per quantization scale group."""


def quantizer_term(bits: int, group: int = GROUP, quantizer: str = "gptq") -> str:
    """The quantization term ``<quantizer>:<b>:g<g>``."""
    return f"{quantizer}:{bits}:g{group}"


def frontier_specs(
    sparsities: Sequence[float | str] = SPARSITIES,
    joint_bits: Sequence[int] = JOINT_BITS,
    removed_blocks: Sequence[int] = REMOVED_BLOCKS,
    removal_bits: Sequence[int] = REMOVAL_BITS,
    group: int = GROUP,
    quantizer: str = "gptq",
) -> list[str]:
    """The grid's specs in order, each once: pruning × bits, then removal × bits (module docstring).

    A sparsity is a fraction in [0, 1) or an N:M pattern string such as ``"2:4"``; 0 pruning and 0 removal
    give the plain quantizer spec.
    """
    specs: list[str] = []
    for sparsity in sparsities:
        for bits in joint_bits:
            specs.append(_prefixed(_pruning_term(sparsity), quantizer_term(bits, group, quantizer)))
    for count in removed_blocks:
        if not isinstance(count, int) or count < 0:
            raise PvqError(f"removed block counts must be integers >= 0, got {count!r}")
        for bits in removal_bits:
            specs.append(_prefixed(f"remove:bi:{count}" if count else "", quantizer_term(bits, group, quantizer)))
    return list(dict.fromkeys(specs))


def _pruning_term(sparsity: float | str) -> str:
    if isinstance(sparsity, str):
        return f"sparsegpt:{sparsity}"
    if not 0 <= sparsity < 1:
        raise PvqError(f"sparsities must lie in [0, 1) or be an N:M pattern such as '2:4', got {sparsity!r}")
    return f"sparsegpt:{sparsity:g}" if sparsity else ""


def _prefixed(prefix: str, term: str) -> str:
    return f"{prefix}+{term}" if prefix else term
