"""The allocation menu: what one linear layer may become, each option a spec term of :mod:`measure.compress.spec`.

``keep`` leaves the layer at 16 bits (damage 0); ``remove`` lets the allocation remove whole decoder blocks (every
linear of a removed block costs 0 bits; the damage is the block's, see :mod:`measure.mixture.sensitivity`; the
allocation applies ``remove:blocks=...`` after its per-layer terms, so the result reloads with plain
``from_pretrained``); every other option is one layer term (``rtn:3:g128``,
``gptq:4:g128``, ``awq:4:g128``, ``sparsegpt:0.5``) or a pruning + quantization pair
(``sparsegpt:0.5+gptq:4:g128``), so any method of :data:`measure.compress.methods.REGISTRY` can be offered by name.
An option's cost on a layer is its method's bits per weight on that layer's shape (:mod:`theory.accounting`,
the methods' default convention: free mask, per-group scales paid in full).
"""

from __future__ import annotations

from dataclasses import dataclass

from measure.compress.spec import LayerStep, parse_spec
from measure.models.architecture import LinearRef
from theory.accounting import BASE_BITS
from theory.errors import PvqError

KEEP = "keep"
REMOVE = "remove"
"""The menu option that removes whole decoder blocks (not a per-layer option: a block goes whole or not at all)."""
DEFAULT_MENU = (
    "keep,rtn:3:g128,gptq:2:g128,gptq:3:g128,gptq:4:g128,gptq:8:g128,sparsegpt:0.5,sparsegpt:0.5+gptq:4:g128"
)
"""``pvq allocate``'s default menu: 16-bit; GPTQ in groups of 128 at 2, 3, 4 and 8 bits; RTN 3-bit in groups of
128 (the sensitivity probe); SparseGPT at 50 % (free mask); SparseGPT 50 % then GPTQ 4-bit."""
FULL_MENU = (
    "keep,rtn:2:g128,rtn:3:g128,rtn:4:g128,rtn:8:g128,awq:2:g128,awq:3:g128,awq:4:g128,awq:8:g128,"
    "gptq:2:g128,gptq:3:g128,gptq:4:g128,gptq:8:g128,sparsegpt:0.25,sparsegpt:0.5,sparsegpt:0.625,sparsegpt:0.75,"
    "sparsegpt:2:4,sparsegpt:0.5+gptq:3:g128,sparsegpt:0.5+gptq:4:g128,sparsegpt:0.25+gptq:4:g128,"
    "sparsegpt:2:4+gptq:4:g128,remove"
)
"""The full menu (paper/README.md): RTN, AWQ and GPTQ in groups of 128 at 2/3/4/8 bits, SparseGPT at
25/50/62.5/75 % and 2:4, SparseGPT followed by GPTQ, and whole-block removal."""


@dataclass(frozen=True)
class MenuOption:
    """One menu entry: its text and its layer step (None for ``keep`` and ``remove``)."""

    text: str
    step: LayerStep | None

    @property
    def removes_block(self) -> bool:
        """True for ``remove`` (the whole block goes)."""
        return self.text == REMOVE

    def bits_per_weight(self, ref: LinearRef) -> float:
        """Storage of ``ref``'s weight under this option, bits per weight (``remove``: 0)."""
        if self.removes_block:
            return 0.0
        return BASE_BITS if self.step is None else self.step.bits_per_weight(ref)

    def covers(self, ref: LinearRef) -> bool:
        """True when the option applies to ``ref`` (``keep`` always does)."""
        return self.step is None or self.step.covers(ref)


def parse_menu(text: str) -> list[MenuOption]:
    """Options of a comma-separated menu (``keep,gptq:4:g128,sparsegpt:0.5+gptq:4:g128``); one PvqError naming the
    bad option (unknown method or parameter, a scope, a model-level term, an option listed twice)."""
    options: list[MenuOption] = []
    for item in (part.strip() for part in str(text).split(",")):
        if any(option.text == item for option in options):
            raise PvqError(f"menu option {item!r} is listed twice")
        options.append(MenuOption(item, None if item in (KEEP, REMOVE) else _option_step(item)))
    return options


def _option_step(item: str) -> LayerStep:
    if "@" in item:
        raise PvqError(f"menu option {item!r} carries a scope; an option applies to one layer, write it without @")
    try:
        spec = parse_spec(item)
    except PvqError as error:
        raise PvqError(
            f"menu option {item!r}: {error} (or '{KEEP}' for 16 bits, '{REMOVE}' to allow removing whole blocks)"
        ) from None
    if len(spec.steps) != 1 or not isinstance(spec.steps[0], LayerStep):
        raise PvqError(
            f"menu option {item!r} must be '{KEEP}', one layer term (gptq:4:g128) or a pruning+quantization pair "
            "(sparsegpt:0.5+gptq:4:g128)"
        )
    return spec.steps[0]
