"""Which part of a model a study looks at, and how its parameters divide: the blocks at named depths, their
linear layers by role, and the parameter counts by part."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from torch import nn

from measure.models.architecture import describe, parameter_counts


def sweep_blocks(count: int, positions: Sequence[str]) -> list[int]:
    """Block indices of ``positions`` ("first", "middle" = (count − 1) // 2, "last") in a model of ``count``
    blocks, sorted, each once."""
    where = {"first": 0, "middle": (count - 1) // 2, "last": count - 1}
    return sorted({where[position] for position in positions})


def sweep_layers(model: nn.Module, positions: Sequence[str], roles: Sequence[str]) -> list[tuple[str, str]]:
    """(name, role) of the linear layers with a role of ``roles`` in the blocks at ``positions``, experts left
    out, in block order."""
    arch = describe(model)
    blocks = [arch.blocks[index] for index in sweep_blocks(len(arch.blocks), positions)]
    return [(ref.name, ref.role) for block in blocks for ref in block.linears
            if ref.role in roles and ref.expert_index is None]  # fmt: skip


def parameter_summary(model: nn.Module) -> pd.DataFrame:
    """Parameters by part (:func:`measure.models.architecture.parameter_counts`: embeddings, attention, MLP, norms,
    final norm, untied LM head, other, total) with their share of the total in %, and the number of blocks, block
    linear layers and the hidden size on every row."""
    arch = describe(model)
    counts = parameter_counts(arch)
    blocks = range(len(arch.blocks))
    parts = {
        "embeddings": counts["embeddings"],
        "attention": sum(counts[f"block.{i}.attention"] for i in blocks),
        "mlp": sum(counts[f"block.{i}.mlp"] for i in blocks),
        "norms": sum(counts[f"block.{i}.other"] for i in blocks),
        "final_norm": counts["final_norm"],
        "lm_head": counts["lm_head"],
        "other": counts["other"],
        "total": counts["total"],
    }
    frame = pd.DataFrame({"part": list(parts), "parameters": list(parts.values())})
    frame["share_pct"] = 100 * frame["parameters"] / counts["total"]
    hidden = arch.linears[0].in_features
    return frame.assign(blocks=len(arch.blocks), linear_layers=len(arch.linears), hidden_size=hidden)
