"""Tiny random-initialised Hugging Face models and a byte-level tokenizer, built offline, for every test.

`tiny_model(family)` builds a model from its config class (no hub access): hidden size 32, 2 blocks,
vocabulary `TINY_VOCAB_SIZE`, float32, eval mode, weights drawn from the config's initialiser after
`torch.manual_seed(seed)`. `tiny_tokenizer()` maps text to UTF-8 bytes (ids 3..258) and prepends <bos>, so
tiny models can read real text. Token ids: <pad> 0, <bos> 1, <eos> 2; the models' configs agree.
`save_tiny_model(family, folder)` saves both as a local model folder, as `pvq` commands load them.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedModel, PreTrainedTokenizerFast

TINY_VOCAB_SIZE = 320
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
_IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
_DECODER = {
    "vocab_size": TINY_VOCAB_SIZE,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    **_IDS,
}
_MOE = {"num_experts_per_tok": 2, "moe_intermediate_size": 16}
_VISION = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 16,
    "patch_size": 8,
}
_IMAGE_TOKENS = {"image_token_index": TINY_VOCAB_SIZE - 1}


def _llava_config() -> transformers.PretrainedConfig:
    return transformers.LlavaConfig(
        text_config=transformers.LlamaConfig(**_DECODER),
        vision_config=transformers.CLIPVisionConfig(**_VISION),
        **_IMAGE_TOKENS,
    )


def _gemma3_vlm_config() -> transformers.PretrainedConfig:
    return transformers.Gemma3Config(
        text_config={**_DECODER, "head_dim": 8},
        vision_config=_VISION,
        mm_tokens_per_image=4,
        boi_token_index=TINY_VOCAB_SIZE - 3,
        eoi_token_index=TINY_VOCAB_SIZE - 2,
        **_IMAGE_TOKENS,
    )


_HYBRID = {**_DECODER, "num_hidden_layers": 4}
_SSM = {"mamba_n_heads": 4, "mamba_d_head": 16, "mamba_d_state": 8, "mamba_n_groups": 1, "mamba_expand": 2}


def _hybrid_configs() -> dict[str, tuple[str, object]]:
    """Hybrid decoders of 4 blocks: token mixers alternate (or run side by side) as the family's config says."""
    return {
        "lfm2": (
            "Lfm2ForCausalLM",
            lambda: transformers.Lfm2Config(
                **_HYBRID, layer_types=["conv", "full_attention"] * 2, block_auto_adjust_ff_dim=False
            ),
        ),
        "qwen3_next": (
            "Qwen3NextForCausalLM",
            lambda: transformers.Qwen3NextConfig(
                **_HYBRID,
                **_MOE,
                layer_types=["linear_attention", "full_attention"] * 2,
                num_experts=4,
                shared_expert_intermediate_size=16,
                head_dim=8,
                linear_num_value_heads=4,
                linear_num_key_heads=2,
                linear_key_head_dim=8,
                linear_value_head_dim=8,
            ),
        ),
        "granitemoehybrid": (
            "GraniteMoeHybridForCausalLM",
            lambda: transformers.GraniteMoeHybridConfig(
                **_HYBRID,
                **_SSM,
                layer_types=["mamba", "attention"] * 2,
                num_local_experts=0,
                shared_intermediate_size=64,
            ),
        ),
        "falcon_h1": (
            "FalconH1ForCausalLM",
            lambda: transformers.FalconH1Config(**_HYBRID, **_SSM, head_dim=8, mamba_d_ssm=64),
        ),
        "jamba": (
            "JambaForCausalLM",
            lambda: transformers.JambaConfig(
                **_HYBRID,
                attn_layer_period=2,
                attn_layer_offset=1,
                expert_layer_period=2,
                expert_layer_offset=1,
                num_experts=4,
                num_experts_per_tok=2,
                mamba_d_state=8,
                mamba_dt_rank=4,
            ),
        ),
        "mamba2": (
            "Mamba2ForCausalLM",
            lambda: transformers.Mamba2Config(
                vocab_size=TINY_VOCAB_SIZE,
                hidden_size=32,
                num_hidden_layers=4,
                num_heads=4,
                head_dim=16,
                state_size=8,
                n_groups=1,
                expand=2,
                **_IDS,
            ),
        ),
        "bamba": (
            "BambaForCausalLM",
            lambda: transformers.BambaConfig(**_HYBRID, **_SSM, attn_layer_indices=[1, 3]),
        ),
        "nemotron_h": (
            "NemotronHForCausalLM",
            lambda: transformers.NemotronHConfig(
                **{k: v for k, v in _HYBRID.items() if k != "num_hidden_layers"},
                layers_block_type=["mamba", "mlp", "attention", "mlp"],
                head_dim=8, mamba_num_heads=4, mamba_head_dim=16, ssm_state_size=8, n_groups=1,
            ),
        ),
    }


def _qwen2_vl_config() -> transformers.PretrainedConfig:
    """8×8 images in 4×4 patches of 2 frames, merged 2×2: one image token per image."""
    return transformers.Qwen2VLConfig(
        text_config={**_DECODER, "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]}},
        vision_config={"depth": 2, "embed_dim": 16, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2,
                       "patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2},
        image_token_id=TINY_VOCAB_SIZE - 1, video_token_id=TINY_VOCAB_SIZE - 2,
        vision_start_token_id=TINY_VOCAB_SIZE - 3, vision_end_token_id=TINY_VOCAB_SIZE - 4,
    )  # fmt: skip


_FAMILIES = {
    "llama": ("LlamaForCausalLM", lambda: transformers.LlamaConfig(**_DECODER)),
    "qwen2": ("Qwen2ForCausalLM", lambda: transformers.Qwen2Config(**_DECODER)),
    "gemma3": ("Gemma3ForCausalLM", lambda: transformers.Gemma3TextConfig(**_DECODER, head_dim=8)),
    "olmo2": ("Olmo2ForCausalLM", lambda: transformers.Olmo2Config(**_DECODER)),
    "gpt2": (
        "GPT2LMHeadModel",
        lambda: transformers.GPT2Config(
            vocab_size=TINY_VOCAB_SIZE, n_embd=32, n_layer=2, n_head=4, n_positions=256, **_IDS
        ),
    ),
    "opt": (
        "OPTForCausalLM",
        lambda: transformers.OPTConfig(
            vocab_size=TINY_VOCAB_SIZE,
            hidden_size=32,
            ffn_dim=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=256,
            word_embed_proj_dim=32,
            **_IDS,
        ),
    ),
    "gpt_neox": (
        "GPTNeoXForCausalLM",
        lambda: transformers.GPTNeoXConfig(
            **{k: v for k, v in _DECODER.items() if k != "num_key_value_heads"}, use_parallel_residual=True
        ),
    ),
    "phi": ("PhiForCausalLM", lambda: transformers.PhiConfig(**_DECODER)),
    "falcon": (
        "FalconForCausalLM",
        lambda: transformers.FalconConfig(
            vocab_size=TINY_VOCAB_SIZE, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, **_IDS
        ),
    ),
    "mixtral": (
        "MixtralForCausalLM",
        lambda: transformers.MixtralConfig(**_DECODER, num_local_experts=4, num_experts_per_tok=2),
    ),
    "qwen2_moe": (
        "Qwen2MoeForCausalLM",
        lambda: transformers.Qwen2MoeConfig(**_DECODER, **_MOE, num_experts=4, shared_expert_intermediate_size=32),
    ),
    "olmoe": (
        "OlmoeForCausalLM",
        lambda: transformers.OlmoeConfig(**_DECODER, num_experts=4, num_experts_per_tok=2),
    ),
    "gpt_oss": (
        "GptOssForCausalLM",
        lambda: transformers.GptOssConfig(**_DECODER, head_dim=8, num_local_experts=4, num_experts_per_tok=2),
    ),
    "llava": ("LlavaForConditionalGeneration", _llava_config),
    "gemma3_vlm": ("Gemma3ForConditionalGeneration", _gemma3_vlm_config),
}
_HYBRIDS = _hybrid_configs()

TINY_FAMILIES = tuple(_FAMILIES)
"""Every attention-decoder family `tiny_model` builds: dense sequential, sandwich-norm, parallel, post-LN-capable,
GPT-2 Conv1D, mixture-of-experts (three fused expert layouts) and two vision-language models."""
HYBRID_FAMILIES = tuple(_HYBRIDS)
"""Hybrid families `tiny_model` builds (4 blocks each): short convolution (LFM2), gated delta-net + MoE
(Qwen3-Next), Mamba2 (Granite-4.0-H, Bamba), Mamba2 beside attention in every block (Falcon-H1), Mamba + MoE
with blocks of two classes (Jamba), state-space only (Mamba2) and one sublayer per block, MLP blocks included
(Nemotron-H)."""
_FAMILIES |= _HYBRIDS
_FAMILIES["qwen2_vl"] = ("Qwen2VLForConditionalGeneration", lambda: _qwen2_vl_config())
VISION_FAMILIES = ("llava", "gemma3_vlm", "qwen2_vl")
"""Vision-language families whose vision towers `describe(model, "vision")` walks: CLIP, SigLIP, Qwen2-VL's ViT."""


def tiny_model(family: str, seed: int = 0, **config_overrides: object) -> PreTrainedModel:
    """A tiny random-initialised model of `family` (one of TINY_FAMILIES or HYBRID_FAMILIES), float32, eval mode.

    `config_overrides` are set on the (language) config before the model is built, e.g.
    `tiny_model("gpt_neox", use_parallel_residual=False)` or `tiny_model("llama", tie_word_embeddings=True)`.
    """
    if family not in _FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {TINY_FAMILIES + HYBRID_FAMILIES}")
    class_name, make_config = _FAMILIES[family]
    config = make_config()
    text_config = config.get_text_config()
    for key, value in config_overrides.items():
        setattr(text_config, key, value)
        if text_config is not config and key == "tie_word_embeddings":
            setattr(config, key, value)
    torch.manual_seed(seed)
    model = getattr(transformers, class_name)(config)
    return model.to(torch.float32).eval()


@functools.cache
def _byte_tokenizer() -> Tokenizer:
    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet(), key=lambda s: _byte_of_symbol()[s])
    vocab = {token: index for index, token in enumerate((*SPECIAL_TOKENS, *byte_symbols))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", 1)]
    )
    return tokenizer


@functools.cache
def _byte_of_symbol() -> dict[str, int]:
    """GPT-2's byte -> printable symbol map, inverted (the ByteLevel pre-tokenizer emits these symbols)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in symbols:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return {symbol: byte for byte, symbol in symbols.items()}


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer: any UTF-8 text -> one token per byte (id = byte + 3), <bos> prepended."""
    return PreTrainedTokenizerFast(
        tokenizer_object=_byte_tokenizer(), pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )


def save_tiny_model(family: str, folder: Path, **config_overrides: object) -> Path:
    """`tiny_model(family, **config_overrides)` and the byte tokenizer saved as a local model folder (what `pvq`
    loads by path); returns `folder`."""
    tiny_model(family, **config_overrides).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def linear_inputs(model: torch.nn.Module, batches: list[torch.Tensor], refs: list) -> dict[str, torch.Tensor]:
    """Input rows (tokens × in, float64) of each linear of ``refs`` (``measure.models.architecture.LinearRef``)
    while
    ``model`` runs ``batches``, captured by forward pre-hooks: an independent view of what its Gram sums."""
    rows: dict[str, list[torch.Tensor]] = {}

    def keep(name: str):
        return lambda module, args: rows.setdefault(name, []).append(args[0].reshape(-1, args[0].shape[-1]))

    handles = [ref.module.register_forward_pre_hook(keep(ref.name)) for ref in refs]
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts).double() for name, parts in rows.items()}
