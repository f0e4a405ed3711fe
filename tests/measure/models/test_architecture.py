"""The architecture walker against direct scans, direct forwards and forward hooks on tiny models."""

from __future__ import annotations

import pytest
import torch
import transformers
from tiny_models import TINY_FAMILIES, TINY_VOCAB_SIZE, tiny_model, tiny_tokenizer
from torch import nn

from measure.models.architecture import (
    Architecture,
    LinearRef,
    describe,
    linear_layers,
    parameter_counts,
    sublayer_input,
    sublayer_output,
    summary_table,
)
from theory.errors import PvqError


class LegacyExpertMLP(nn.Module):
    """One expert as transformers 4.x Mixtral stored it: w1 (gate), w3 (up), w2 (down) nn.Linear layers."""

    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(hidden, inner, bias=False)
        self.w3 = nn.Linear(hidden, inner, bias=False)
        self.w2 = nn.Linear(inner, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(nn.functional.silu(self.w1(x)) * self.w3(x))


class LegacySparseMoe(nn.Module):
    """A top-1 mixture of experts with an nn.Linear router and a ModuleList of experts (the pre-5.x layout)."""

    def __init__(self, hidden: int, inner: int, count: int) -> None:
        super().__init__()
        self.gate = nn.Linear(hidden, count, bias=False)
        self.experts = nn.ModuleList(LegacyExpertMLP(hidden, inner) for _ in range(count))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        choice = self.gate(x).argmax(dim=-1)
        return sum((choice == e).unsqueeze(-1) * expert(x) for e, expert in enumerate(self.experts))


def build(family: str, **overrides: object) -> transformers.PreTrainedModel:
    """A tiny model; "legacy_moe" is a tiny Llama whose MLPs are `LegacySparseMoe` blocks."""
    if family != "legacy_moe":
        return tiny_model(family, **overrides)
    model = tiny_model("llama", **overrides)
    torch.manual_seed(1)
    for layer in model.model.layers:
        layer.mlp = LegacySparseMoe(32, 16, 3)
    return model


FAMILIES = (*TINY_FAMILIES, "legacy_moe")
WIRING_VARIANTS = [
    *[(family, {}) for family in FAMILIES],
    ("gpt_neox", {"use_parallel_residual": False}),
    ("opt", {"do_layer_norm_before": False}),
    ("falcon", {"parallel_attn": False}),
    ("falcon", {"new_decoder_architecture": True, "num_kv_heads": 2}),
]


def block_matrices(model: nn.Module, arch: Architecture) -> dict[str, torch.Tensor]:
    """Direct scan: every non-bias parameter of the decoder blocks with two or more dimensions (linear and
    router weights, stacked expert weights)."""
    block_list = model.get_submodule(arch.blocks_path)
    named = block_list.named_parameters(prefix=arch.blocks_path)
    return {n: p for n, p in named if p.dim() >= 2 and not n.endswith("bias")}


def direct_output(ref: LinearRef, x: torch.Tensor) -> torch.Tensor:
    """The module's own forward on x (stacked experts: every token routed to the ref's expert with weight 1)."""
    if not ref.stacked:
        return sublayer_output(ref.module(x))
    index = torch.full((x.shape[0], 1), ref.expert_index)
    return ref.module(x, index, torch.ones(x.shape[0], 1))


def stacked_expert_views(arch: Architecture, ref: LinearRef) -> dict[str, LinearRef]:
    return {r.role: r for r in arch.linears if r.module is ref.module and r.expert_index == ref.expert_index}


def expert_reference(arch: Architecture, ref: LinearRef, x: torch.Tensor) -> torch.Tensor:
    """Expert output rebuilt from the walker's per-expert (out, in) views and the module's own gate function."""
    module = ref.module
    views = stacked_expert_views(arch, ref)

    def apply(role: str, inputs: torch.Tensor) -> torch.Tensor:
        bias = views[role].bias()
        return inputs @ views[role].weight().T + (0 if bias is None else bias)

    gate, up = apply("expert.gate", x), apply("expert.up", x)
    gate_up = torch.cat([gate, up], -1) if module.is_concatenated else torch.stack([gate, up], -1).flatten(-2)
    return apply("expert.down", module._apply_gate(gate_up))


@pytest.mark.parametrize("family", FAMILIES)
def test_blocks_embeddings_norm_and_head_are_found(family: str) -> None:
    model = build(family)
    arch = describe(model)
    config = model.config.get_text_config()
    block_list = model.get_submodule(arch.blocks_path)
    assert len(arch.blocks) == config.num_hidden_layers == len(block_list)
    assert [b.module for b in arch.blocks] == list(block_list)
    assert arch.embeddings is model.get_input_embeddings()
    assert arch.lm_head is model.get_output_embeddings()
    assert "Norm" in type(arch.final_norm).__name__
    assert arch.final_norm in list(arch.backbone.children())
    assert all(ref.in_features == config.hidden_size for ref in arch.linears if ref.role in {"q", "qkv"})
    assert "vision" not in arch.blocks_path


@pytest.mark.parametrize("family", FAMILIES)
def test_every_block_matrix_is_covered_exactly_once(family: str) -> None:
    model = build(family)
    arch = describe(model)
    matrices = block_matrices(model, arch)
    assert {ref.parameter_name for ref in arch.linears} == set(matrices)
    assert len({ref.name for ref in arch.linears}) == len(arch.linears)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for ref in arch.linears:
        ref.set_weight(ref.weight() + 1)
    for name, p in model.named_parameters():
        expected = before[name] + 1 if name in matrices else before[name]
        assert torch.equal(p.detach(), expected), name


@pytest.mark.parametrize("family", FAMILIES)
def test_weight_views_match_forward_and_set_weight_writes_back(family: str) -> None:
    model = build(family)
    arch = describe(model)
    generator = torch.Generator().manual_seed(0)
    for ref in arch.linears:
        in_features = stacked_expert_views(arch, ref)["expert.up"].in_features if ref.stacked else ref.in_features
        x = torch.randn(5, in_features, generator=generator)
        with torch.no_grad():
            before = direct_output(ref, x)
            new_weight = torch.randn(ref.out_features, ref.in_features, generator=generator)
            ref.set_weight(new_weight)
            after = direct_output(ref, x)
        assert torch.equal(ref.weight(), new_weight), ref.name
        assert not torch.allclose(before, after), ref.name
        if not ref.stacked:
            bias = ref.bias()
            expected = x @ new_weight.T + (0 if bias is None else bias)
        else:
            expected = expert_reference(arch, ref, x)
        torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5, msg=ref.name)


def test_set_weight_rejects_a_wrong_shape() -> None:
    ref = describe(tiny_model("gpt2")).linears[0]
    with pytest.raises(PvqError, match=r"\(out, in\)"):
        ref.set_weight(torch.zeros(ref.in_features, ref.out_features))


@pytest.mark.parametrize(
    ("family", "overrides", "parallel"),
    [
        ("gpt_neox", {"use_parallel_residual": True}, True),
        ("gpt_neox", {"use_parallel_residual": False}, False),
        ("phi", {}, True),
        ("falcon", {}, True),
        ("falcon", {"parallel_attn": False}, False),
        ("llama", {}, False),
        ("gpt2", {}, False),
        ("gemma3", {}, False),
        ("olmo2", {}, False),
    ],
)
def test_parallel_flag(family: str, overrides: dict, parallel: bool) -> None:
    assert [b.parallel for b in describe(tiny_model(family, **overrides)).blocks] == [parallel, parallel]


def roles_to_groups(arch: Architecture, block: int = 0) -> dict[str, str]:
    refs = arch.blocks[block].linears
    return {
        ref.role if ref.expert_index is None else f"{ref.role}{ref.expert_index}": ref.shared_input_group
        for ref in refs
    }


def test_shared_input_groups_of_sequential_dense_blocks() -> None:
    groups = roles_to_groups(describe(tiny_model("llama")))
    assert groups["q"] == groups["k"] == groups["v"] != groups["o"]
    assert groups["gate"] == groups["up"] != groups["down"]
    assert len({groups["q"], groups["o"], groups["gate"], groups["down"]}) == 4


def test_shared_input_groups_of_parallel_blocks() -> None:
    phi = roles_to_groups(describe(tiny_model("phi")))
    assert phi["q"] == phi["k"] == phi["v"] == phi["fc1"]
    neox = roles_to_groups(describe(tiny_model("gpt_neox")))
    assert neox["qkv"] != neox["fc1"]


def test_shared_input_groups_of_mixture_of_experts() -> None:
    groups = roles_to_groups(describe(tiny_model("qwen2_moe")))
    assert groups["router"] == groups["shared.gate"] == groups["shared.up"] == groups["shared_gate"]
    assert groups["expert.gate0"] == groups["expert.up0"] != groups["expert.gate1"]
    assert len({groups[f"expert.down{e}"] for e in range(4)} | {groups["expert.gate0"], groups["router"]}) == 6


@pytest.mark.parametrize("family", FAMILIES)
def test_members_of_a_shared_input_group_see_the_same_input(family: str) -> None:
    """Hooks on every linear module: layers the walker groups together receive equal inputs."""
    model = build(family)
    arch = describe(model)
    seen: dict[str, list[torch.Tensor]] = {}
    handles = [
        ref.module.register_forward_pre_hook(
            lambda _m, args, kwargs, group=ref.shared_input_group: seen.setdefault(group, []).append(
                sublayer_input(args, kwargs).detach().clone()
            ),
            with_kwargs=True,
        )
        for ref in arch.linears
        if not ref.stacked
    ]
    with torch.no_grad():
        model(input_ids=torch.arange(3, 19).reshape(2, 8))
    for handle in handles:
        handle.remove()
    shared = {group: inputs for group, inputs in seen.items() if len(inputs) > 1}
    assert family in {"gpt2", "gpt_neox"} or shared
    for group, inputs in shared.items():
        for tensor in inputs[1:]:
            torch.testing.assert_close(tensor.reshape(inputs[0].shape), inputs[0], msg=group)


def apply_norm(norm: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    return x if norm is None else norm(x)


@pytest.mark.parametrize(("family", "overrides"), WIRING_VARIANTS)
def test_hooks_see_the_claimed_residual_stream(family: str, overrides: dict) -> None:
    """Block input x and sublayer inputs/outputs from hooks obey the wiring the walker reports:
    sequential h = R_A(x + O_A(a)), m_in = N_M(h), y = R_M(h + O_M(m)); parallel m_in = N_M(x), y = x + a + m."""
    model = build(family, **overrides)
    arch = describe(model)
    record: dict[tuple[int, str], torch.Tensor] = {}
    handles = []

    def keep_input(key: tuple[int, str]):
        def hook(_module, args, kwargs):
            record[key] = sublayer_input(args, kwargs).detach().clone()

        return hook

    def keep_output(key: tuple[int, str]):
        def hook(_module, _args, output):
            record[key] = sublayer_output(output).detach().clone()

        return hook

    for block in arch.blocks:
        i = block.index
        handles += [
            block.module.register_forward_pre_hook(keep_input((i, "x")), with_kwargs=True),
            block.module.register_forward_hook(keep_output((i, "y"))),
            block.attention.input_module.register_forward_pre_hook(keep_input((i, "a_in")), with_kwargs=True),
            block.attention.output_module.register_forward_hook(keep_output((i, "a"))),
            block.mlp.input_module.register_forward_pre_hook(keep_input((i, "m_in")), with_kwargs=True),
            block.mlp.output_module.register_forward_hook(keep_output((i, "m"))),
        ]
    with torch.no_grad():
        model(input_ids=torch.arange(3, 19).reshape(2, 8))
        for handle in handles:
            handle.remove()
        for block in arch.blocks:
            x, a, m = (record[block.index, key] for key in ("x", "a", "m"))
            a, m = a.reshape(x.shape), m.reshape(x.shape)
            attention, mlp = block.attention, block.mlp
            mlp_input = record[block.index, "m_in"].reshape(x.shape)
            torch.testing.assert_close(record[block.index, "a_in"], apply_norm(attention.input_norm, x))
            if block.parallel:
                torch.testing.assert_close(mlp_input, apply_norm(mlp.input_norm, x))
                torch.testing.assert_close(record[block.index, "y"], x + a + m)
            else:
                h = apply_norm(attention.residual_norm, x + apply_norm(attention.output_norm, a))
                torch.testing.assert_close(mlp_input, apply_norm(mlp.input_norm, h))
                y = apply_norm(mlp.residual_norm, h + apply_norm(mlp.output_norm, m))
                torch.testing.assert_close(record[block.index, "y"], y)


@pytest.mark.parametrize("family", FAMILIES)
def test_parameter_counts_add_up_to_the_model(family: str) -> None:
    model = build(family)
    counts = parameter_counts(describe(model))
    total = sum(p.numel() for p in model.parameters())
    parts = counts["embeddings"] + counts["decoder"] + counts["final_norm"] + counts["lm_head"] + counts["other"]
    assert parts == counts["total"] == total
    per_block = [counts[f"block.{i}.{part}"] for i in range(2) for part in ("attention", "mlp", "other")]
    assert sum(per_block) == counts["decoder"]


@pytest.mark.parametrize("tied", [True, False])
def test_parameter_counts_of_a_llama_block_match_the_closed_form(tied: bool) -> None:
    arch = describe(tiny_model("llama", tie_word_embeddings=tied))
    counts = parameter_counts(arch)
    hidden, inner, head_dim, kv_heads = 32, 64, 8, 2
    assert counts["block.0.attention"] == 2 * hidden * hidden + 2 * hidden * kv_heads * head_dim
    assert counts["block.0.mlp"] == 3 * hidden * inner
    assert counts["block.0.other"] == 2 * hidden
    assert counts["embeddings"] == TINY_VOCAB_SIZE * hidden
    assert counts["lm_head"] == (0 if tied else TINY_VOCAB_SIZE * hidden)
    assert arch.tied_embeddings is tied


def test_vision_tower_counts_as_other() -> None:
    model = tiny_model("llava")
    counts = parameter_counts(describe(model))
    outside_language_model = sum(
        p.numel() for n, p in model.named_parameters() if not n.startswith(("model.language_model.", "lm_head."))
    )
    assert counts["other"] == outside_language_model > 0


@pytest.mark.parametrize("family", ["gpt2", "qwen2_moe", "opt", "legacy_moe"])
def test_summary_table_has_one_row_per_linear_with_its_parameters(family: str) -> None:
    model = build(family)
    arch = describe(model)
    table = summary_table(arch)
    assert list(table.columns) == [
        "name",
        "block",
        "sublayer",
        "role",
        "expert",
        "out",
        "in",
        "params",
        "shared_input_group",
    ]
    assert len(table) == len(list(linear_layers(model)))
    block_list = model.get_submodule(arch.blocks_path)
    linear_parameters = sum(
        p.numel()
        for module in block_list.modules()
        if "Norm" not in type(module).__name__
        for p in module.parameters(recurse=False)
    )
    assert table["params"].sum() == linear_parameters


def test_unsupported_models_raise_one_error_naming_the_class() -> None:
    with pytest.raises(PvqError, match="cannot walk Linear: it has no `config`"):
        describe(nn.Linear(2, 2))
    bert = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
        )
    )
    with pytest.raises(PvqError, match=r"cannot walk BertModel: expected one nn\.ModuleList"):
        describe(bert)
    shortened = tiny_model("llama")
    del shortened.model.layers[1]
    with pytest.raises(PvqError, match=r"LlamaForCausalLM.*num_hidden_layers = 2.*model\.layers \(1\)"):
        describe(shortened)


def test_a_norm_missing_from_the_naming_table_is_named_in_the_error() -> None:
    model = tiny_model("llama")
    model.model.layers[0].add_module("mystery_norm", nn.LayerNorm(32))
    with pytest.raises(PvqError, match=r"LlamaForCausalLM block model\.layers\.0: its norm `mystery_norm`"):
        describe(model)


def test_tiny_models_are_seeded() -> None:
    first, again, other = (tiny_model("qwen2", seed=s).model.layers[0].mlp.up_proj.weight for s in (0, 0, 1))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_tiny_tokenizer_round_trips_text_and_fits_every_tiny_vocabulary() -> None:
    tokenizer = tiny_tokenizer()
    text = "Pruning vs. quantization — ¿which is better?"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id == 1
    assert ids[1:] == [byte + 3 for byte in text.encode("utf-8")]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert len(tokenizer) <= TINY_VOCAB_SIZE
