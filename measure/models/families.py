"""The naming conventions of Hugging Face decoder families that the module graph cannot tell by itself.

`measure.models.architecture` discovers blocks, sublayers, linear layers, experts and routers from the module graph
and the config. What it cannot discover is what a *name* means: that `c_attn` is a fused q/k/v projection,
that `ln_2` normalises the MLP input, that Gemma's `post_attention_layernorm` normalises the attention
output while Llama's normalises the MLP input. Those facts live here, as data, and nowhere else.
Adding a family that uses new names means adding its names here; nothing else changes.
"""

from __future__ import annotations

MIXER_KINDS = ("attention", "linear_attention", "mamba", "short_conv")
"""Kinds of token mixer a block may hold: softmax attention (full or sliding), linear attention / gated
delta-net, a state-space layer (Mamba, Mamba2) and a gated short convolution (LFM2)."""

CHANNEL_MIXER_KINDS = ("mlp", "moe")
"""Kinds of channel mixer a block may hold: a dense MLP, or a mixture of experts (routed, maybe shared)."""

MIXER_CHILD_NAMES = {
    "self_attn": "attention",
    "attn": "attention",
    "attention": "attention",
    "self_attention": "attention",
    "linear_attn": "linear_attention",
    "mamba": "mamba",
    "mixer": "mamba",
    "conv": "short_conv",
}
"""Attribute name of a block's token mixer -> its kind, unless its class name carries a `MIXER_CLASS_MARKERS`
marker, which decides (Nemotron-H names every mixer `mixer`)."""

MIXER_CLASS_MARKERS = (
    ("GatedDeltaNet", "linear_attention"),
    ("LinearAttention", "linear_attention"),
    ("Attention", "attention"),
    ("Mamba", "mamba"),
    ("Mixer", "mamba"),
    ("ShortConv", "short_conv"),
)
"""(substring of a token mixer's class name, its kind), most specific first."""

MLP_CHILD_NAMES = frozenset({"mlp", "feed_forward", "block_sparse_moe", "ffn", "moe", "shared_mlp"})
"""Attribute names of a block's MLP sublayer (besides classes named like `MLP_CLASS_MARKERS`)."""

MLP_CLASS_MARKERS = ("MLP", "FeedForward", "SparseMoeBlock", "Moe", "Experts")
"""Substrings of the class name of a block's MLP (dense or mixture-of-experts) sublayer."""

ATTENTION_ROLES = {
    "q_proj": "q",
    "query": "q",
    "k_proj": "k",
    "key": "k",
    "v_proj": "v",
    "value": "v",
    "query_key_value": "qkv",
    "c_attn": "qkv",
    "qkv_proj": "qkv",
    "Wqkv": "qkv",
    "W_pack": "qkv",
    "o_proj": "o",
    "out_proj": "o",
    "dense": "o",
    "c_proj": "o",
    "wo": "o",
    "qkv": "qkv",
    "proj": "o",
}
"""Leaf name of a linear layer inside an attention sublayer -> its role."""

MLP_ROLES = {
    "gate_proj": "gate",
    "w1": "gate",
    "up_proj": "up",
    "w3": "up",
    "gate_up_proj": "gate_up",
    "fc1": "fc1",
    "c_fc": "fc1",
    "fc_in": "fc1",
    "dense_h_to_4h": "fc1",
    "down_proj": "down",
    "w2": "down",
    "fc2": "fc2",
    "c_proj": "fc2",
    "fc_out": "fc2",
    "dense_4h_to_h": "fc2",
    "input_linear": "gate_up",
    "output_linear": "down",
}
"""Leaf name of a linear layer inside a dense MLP (or one expert, or a shared expert) -> its role."""

MOE_GATE_ROLES = {"shared_expert_gate": "shared_gate"}
"""Linear layers directly inside a mixture-of-experts block that gate the shared expert (not the router)."""

STATE_SPACE_ROLES = {"in_proj": "in", "x_proj": "x", "dt_proj": "dt", "out_proj": "out"}
"""Leaf name of a linear layer inside a Mamba / Mamba2 mixer -> its role: `in` projects the block input to the
gate, the convolution input and (Mamba2) B, C and dt; `x` (Mamba) reads the convolution output and gives dt,
B, C; `dt` expands dt to the channels; `out` maps the gated scan output back to the residual stream."""

LINEAR_ATTENTION_ROLES = {
    "in_proj_qkvz": "qkvz",
    "in_proj_ba": "ba",
    "in_proj_qkv": "qkv",
    "in_proj_z": "z",
    "in_proj_b": "b",
    "in_proj_a": "a",
    "out_proj": "out",
}
"""Leaf name of a linear layer inside a gated delta-net (Qwen3-Next, Qwen3.5) -> its role."""

SHORT_CONV_ROLES = {"in_proj": "in", "out_proj": "out"}
"""Leaf name of a linear layer inside a gated short convolution (LFM2): `in` gives B, C and x, `out` maps
the gated convolution back to the residual stream."""

MIXER_ROLES = {
    "attention": ATTENTION_ROLES,
    "linear_attention": LINEAR_ATTENTION_ROLES,
    "mamba": STATE_SPACE_ROLES,
    "short_conv": SHORT_CONV_ROLES,
}
"""Token-mixer kind -> the role table of its linear layers."""

PRIVATE_INPUT_ROLES = frozenset({"o", "down", "fc2", "out", "x", "dt"})
"""Roles whose input is private to the layer (attention context, MLP hidden units, a scan or convolution
output, dt); all other roles read the sublayer input and so share it with their siblings."""

ATTENTION_INPUT_NORMS = frozenset(
    {
        "input_layernorm",
        "ln_1",
        "ln_attn",
        "self_attn_layer_norm",
        "attention_norm",
        "norm_1",
        "operator_norm",
        "norm",
        "layer_norm1",
        "norm1",
    }
)
"""Block-level norms that normalise the token-mixer input (in a pre-norm block): attention, or the state-space,
convolution or linear-attention mixer in its place (LFM2's `operator_norm`, Mamba2's `norm`)."""

MLP_INPUT_NORMS = frozenset(
    {
        "post_attention_layernorm",
        "ln_2",
        "ln_mlp",
        "pre_feedforward_layernorm",
        "pre_mlp_layernorm",
        "final_layer_norm",
        "ffn_norm",
        "norm_2",
        "pre_ff_layernorm",
        "layer_norm2",
        "norm2",
    }
)
"""Block-level norms that normalise the MLP input (in a pre-norm block)."""

MLP_OUTPUT_NORMS = frozenset({"post_feedforward_layernorm", "post_mlp_layernorm"})
"""Sandwich norms applied to the MLP output before the residual add (Gemma 2/3, OLMo 2)."""

SANDWICH_ATTENTION_OUTPUT_NORMS = frozenset({"post_attention_layernorm"})
"""In a block that also has an `MLP_OUTPUT_NORMS` norm, these normalise the attention output instead of
the MLP input (Gemma 2/3 and OLMo 2 reuse Llama's name with the other meaning)."""

PARALLEL_CONFIG_FLAGS = ("use_parallel_residual", "parallel_attn")
"""Config flags that say whether attention and MLP read the same block input (GPT-NeoX, StableLM: first;
Falcon: second). Without a flag, a block with an attention input norm and no MLP input norm is parallel
(Phi, GPT-J, CodeGen, Cohere)."""

PRE_NORM_CONFIG_FLAGS = ("do_layer_norm_before",)
"""Config flags that, when False, move the block norms after the residual add (post-LN OPT-350m)."""

TUPLE_OUTPUT_BLOCK_FAMILIES = frozenset({"bamba", "falcon_h1"})
"""Families (config model_type) whose backbone unpacks or indexes a tuple `(hidden_states, attention weights)`
returned by each block, where the others take the hidden states alone."""

LINEAR_INPUT_SOURCES = {"dt_proj": "dt_layernorm"}
"""Linear layers some mixers apply through their weight without calling the module (Jamba's Mamba computes
dt_proj.weight @ dt), so hooks on them never fire -> the sibling module whose output is their input."""

VISION_DEPTH_KEYS = ("num_hidden_layers", "depth")
"""Vision-config attributes that hold the number of encoder blocks (CLIP / SigLIP: first; Qwen2-VL: second)."""

PROJECTOR_NAMES = frozenset({"multi_modal_projector", "merger"})
"""Attribute names of the module that maps vision features into the language model's embedding space."""
