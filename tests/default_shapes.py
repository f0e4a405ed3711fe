"""The three embedded default models' shapes, built offline: transformers configs with their real dimensions and
the model classes on the meta device (no weights, no download), so checks that read only a model's config and
module structure run on every default in any test. The slow tests compare these shapes with the loaded defaults.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers
from transformers import PreTrainedModel

DEFAULT_SHAPES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "smollm2-135m": ("LlamaConfig", "LlamaForCausalLM", {
        "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "tie_word_embeddings": True}),
    "gemma3-270m": ("Gemma3TextConfig", "Gemma3ForCausalLM", {
        "vocab_size": 262144, "hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 18,
        "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256}),
    "qwen2.5-0.5b": ("Qwen2Config", "Qwen2ForCausalLM", {
        "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "tie_word_embeddings": False}),
}  # fmt: skip
"""Default name -> (config class, model class, the config's dimensions) of SmolLM2-135M, Gemma-3-270M and
Qwen2.5-Coder-0.5B."""


def default_config(name: str) -> transformers.PretrainedConfig:
    """The config of default ``name`` with its real dimensions (other fields at the class defaults)."""
    config_class, _, dimensions = DEFAULT_SHAPES[name]
    return getattr(transformers, config_class)(**dimensions)


def meta_default(name: str) -> PreTrainedModel:
    """Default ``name``'s model class built from :func:`default_config` on the meta device: every module and
    parameter shape, no weights."""
    _, model_class, _ = DEFAULT_SHAPES[name]
    with torch.device("meta"):
        return getattr(transformers, model_class)(default_config(name)).eval()
