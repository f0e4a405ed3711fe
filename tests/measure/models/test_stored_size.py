"""Stored size of a checkpoint: GGUF types' bits from their block layouts, a hand-made GGUF and safetensors folder
weighted by hand over the three bases, and the size recorded by loads, `pvq models` and `pvq info`."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf.quants import quantize
from safetensors.torch import save_file
from tiny_models import save_tiny_model

from measure.models.defaults import DEFAULT_MODEL, DEFAULT_MODELS
from measure.models.load import load_model
from measure.models.stored_size import gguf_type_bits, stored_bits_per_parameter
from pvq.cli import main
from theory.errors import PvqError

T = gguf.GGMLQuantizationType

# name: (GGUF type, shape as (rows, columns)); the block tensors carry the index "0"
GGUF_TENSORS = {
    "token_embd.weight": (T.F16, (48, 64)),
    "blk.0.attn_q.weight": (T.Q8_0, (32, 64)),
    "blk.0.ffn_down.weight": (T.F16, (16, 64)),
    "blk.0.attn_norm.weight": (T.F32, (64,)),
    "output_norm.weight": (T.F32, (64,)),
}


@pytest.mark.parametrize(
    ("tensor_type", "bits"),
    [
        (T.Q4_1, 4 + 16 / 32 + 16 / 32),  # 4-bit codes, fp16 scale and fp16 minimum per 32
        (T.Q4_K, 4 + (12 * 8 + 2 * 16) / 256),  # 8 sub-blocks' 6-bit scales and mins (12 bytes), fp16 d, dmin
        (T.Q5_K, 5 + (12 * 8 + 2 * 16) / 256),
        (T.Q6_K, 6 + (16 * 8 + 16) / 256),  # 16 int8 sub-block scales, fp16 d
        (T.Q8_0, 8 + 16 / 32),
        (T.F16, 16),
        (T.F32, 32),
    ],
)
def test_gguf_type_bits_follow_the_block_layouts(tensor_type, bits) -> None:
    assert gguf_type_bits(tensor_type) == bits


def write_gguf(path: Path) -> Path:
    """A GGUF holding :data:`GGUF_TENSORS`, the Q8_0 tensor quantized by ``gguf.quants.quantize``."""
    generator = np.random.default_rng(0)
    writer = gguf.GGUFWriter(path, "llama")
    for name, (tensor_type, shape) in GGUF_TENSORS.items():
        values = generator.standard_normal(shape).astype(np.float32)
        if tensor_type == T.Q8_0:
            writer.add_tensor(name, quantize(values, tensor_type), raw_dtype=tensor_type)
        else:
            writer.add_tensor(name, values.astype(np.float16 if tensor_type == T.F16 else np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_hand_made_gguf_weighs_its_tensor_types_by_parameter_count(tmp_path) -> None:
    stored = stored_bits_per_parameter(str(write_gguf(tmp_path / "tiny.gguf")))
    q, down, norm, embed = 32 * 64, 16 * 64, 64, 48 * 64
    assert stored.bits_per_linear_weight == pytest.approx((8.5 * q + 16 * down) / (q + down), rel=1e-12)
    decoder = (8.5 * q + 16 * down + 32 * norm) / (q + down + norm)
    assert stored.bits_per_decoder_parameter == pytest.approx(decoder, rel=1e-12)
    total = 8.5 * q + 16 * (down + embed) + 32 * 2 * norm
    assert stored.bits_per_model_parameter == pytest.approx(total / (q + down + embed + 2 * norm), rel=1e-12)
    assert (stored.format, stored.types) == ("GGUF Q8_0/F16", {"Q8_0": q, "F16": down})


def test_the_gguf_bits_are_the_bytes_the_file_stores(tmp_path) -> None:
    """Independent of the block-layout table: ``8·n_bytes/n_elements`` of every tensor the reader sees."""
    path = write_gguf(tmp_path / "tiny.gguf")
    tensors = gguf.GGUFReader(path).tensors
    total_bits = sum(8 * int(tensor.n_bytes) for tensor in tensors)
    elements = sum(int(tensor.n_elements) for tensor in tensors)
    assert stored_bits_per_parameter(str(path)).bits_per_model_parameter == pytest.approx(total_bits / elements)


def test_a_safetensors_folder_counts_bf16_as_16_and_fp32_as_32_bits(tmp_path) -> None:
    save_file({"model.layers.0.self_attn.q_proj.weight": torch.zeros(8, 16, dtype=torch.bfloat16),
               "model.layers.0.input_layernorm.weight": torch.ones(16, dtype=torch.float32)},
              tmp_path / "model-00001-of-00002.safetensors")  # fmt: skip
    save_file({"model.layers.1.mlp.up_proj.weight": torch.zeros(4, 16, dtype=torch.float16),
               "model.embed_tokens.weight": torch.zeros(10, 16, dtype=torch.float32)},
              tmp_path / "model-00002-of-00002.safetensors")  # fmt: skip
    stored = stored_bits_per_parameter(str(tmp_path))
    assert (stored.format, stored.bits_per_linear_weight) == ("safetensors BF16/F16", 16.0)
    assert stored.bits_per_decoder_parameter == pytest.approx((16 * 192 + 32 * 16) / 208)
    assert stored.bits_per_model_parameter == pytest.approx((16 * 192 + 32 * 176) / 368)


def test_a_load_records_the_stored_size_in_its_provenance(tmp_path) -> None:
    loaded = load_model(str(save_tiny_model("llama", tmp_path / "llama")))
    record = loaded.describe()["stored_size"]
    assert (record["format"], record["bits_per_linear_weight"], record["bits_per_model_parameter"]) == (
        "safetensors F32", 32.0, 32.0
    )


def test_models_and_info_show_the_stored_size(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PVQ_CACHE", str(tmp_path))
    asset = DEFAULT_MODELS[DEFAULT_MODEL].asset.path
    asset.parent.mkdir(parents=True)
    write_gguf(asset)
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    expected = stored_bits_per_parameter(DEFAULT_MODEL).describe()
    assert lines[list(DEFAULT_MODELS).index(DEFAULT_MODEL)].endswith(f"; stored as {expected}")
    assert all(line.endswith("; stored size read from the GGUF once fetched")
               for name, line in zip(DEFAULT_MODELS, lines, strict=True) if name != DEFAULT_MODEL)  # fmt: skip
    assert main(["info", str(save_tiny_model("llama", tmp_path / "llama")), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stored_size"]["bits_per_decoder_parameter"] == 32.0


def test_a_folder_without_safetensors_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(PvqError, match=r"holds no \*\.safetensors file"):
        stored_bits_per_parameter(str(tmp_path))
