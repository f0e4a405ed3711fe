"""The size a checkpoint is stored at: its format and exact bits per parameter, read from the file's tensor types.

A GGUF tensor of type T is stored in blocks of ``n_T`` weights taking ``B_T`` bytes each
(``gguf.GGML_QUANT_SIZES[T] = (n_T, B_T)``), so it costs ``8·B_T/n_T`` bits per weight: Q4_1 = 8·20/32 = 5.0
(4-bit codes plus an fp16 scale and an fp16 minimum per 32), Q4_K = 4.5, Q5_K = 5.5, Q6_K = 6.5625, Q8_0 = 8.5,
F16 = 16, F32 = 32. A safetensors tensor costs ``8·bytes/elements`` from its header's data offsets (bf16 / fp16 =
16, fp32 = 32). The checkpoint's bits per parameter are these, weighted by parameter count over three bases:

* the decoder's linear weights — tensors of the decoder blocks with two or more dimensions;
* the decoder's parameters — every tensor of the decoder blocks (norm gains included);
* the model's parameters — every tensor (embeddings and output head included).

A decoder-block tensor is one whose dotted name holds an integer index — the index of its block in the model's
list of blocks (``blk.3.attn_q.weight`` in GGUF, ``model.layers.3.self_attn.q_proj.weight`` in safetensors).
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import gguf
from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError

from measure.models.defaults import DEFAULT_MODELS
from measure.models.fetch import ensure_asset
from theory.errors import PvqError


@dataclass(frozen=True)
class StoredTensor:
    """One stored tensor: its name, storage type, element count, dimensions and bits per element."""

    name: str
    type_name: str
    elements: int
    dims: int
    bits: float

    @property
    def in_decoder(self) -> bool:
        """True for a tensor of the decoder blocks (an integer index in its dotted name, module docstring)."""
        return any(part.isdigit() for part in self.name.split("."))


@dataclass(frozen=True)
class StoredSize:
    """A checkpoint's stored format and its bits per parameter over the three bases of the module docstring.

    ``types``: parameter count of every storage type over the decoder's linear weights (e.g. ``{"Q4_1": …}``).
    """

    format: str
    bits_per_linear_weight: float
    bits_per_decoder_parameter: float
    bits_per_model_parameter: float
    types: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        """Plain fields for provenance records and JSON."""
        return asdict(self)

    def describe(self) -> str:
        """One line, e.g. ``GGUF Q4_1: 5.0000 bits per linear weight, … per decoder parameter, …``."""
        return (
            f"{self.format}: {self.bits_per_linear_weight:.4f} bits per linear weight, "
            f"{self.bits_per_decoder_parameter:.4f} per decoder parameter, "
            f"{self.bits_per_model_parameter:.4f} per model parameter"
        )


def gguf_type_bits(tensor_type: gguf.GGMLQuantizationType) -> float:
    """``8·B_T/n_T`` bits per weight of a GGUF tensor type, from ``gguf.GGML_QUANT_SIZES`` (module docstring)."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[tensor_type]
    return 8 * type_size / block_size


def _mean_bits(tensors: Iterable[StoredTensor]) -> float:
    """``Σ bits·elements / Σ elements``: bits per parameter of a set of tensors."""
    chosen = list(tensors)
    elements = sum(tensor.elements for tensor in chosen)
    if elements == 0:
        raise PvqError("the checkpoint holds no tensor of this kind; is it a decoder model?")
    return sum(tensor.bits * tensor.elements for tensor in chosen) / elements


def summarize(container: str, tensors: list[StoredTensor]) -> StoredSize:
    """The :class:`StoredSize` of a checkpoint in ``container`` (``"GGUF"``, ``"safetensors"``) from its tensors.

    The format names the linear weights' types, commonest first (``GGUF Q4_K/Q6_K``)."""
    decoder = [tensor for tensor in tensors if tensor.in_decoder]
    linear = [tensor for tensor in decoder if tensor.dims >= 2]
    types = Counter[str]()
    for tensor in linear:
        types[tensor.type_name] += tensor.elements
    return StoredSize(
        format=f"{container} {'/'.join(name for name, _ in types.most_common())}",
        bits_per_linear_weight=_mean_bits(linear),
        bits_per_decoder_parameter=_mean_bits(decoder),
        bits_per_model_parameter=_mean_bits(tensors),
        types=dict(types.most_common()),
    )


def gguf_tensors(path: Path) -> list[StoredTensor]:
    """The tensors of a GGUF file with the bits of their types (:func:`gguf_type_bits`)."""
    reader = gguf.GGUFReader(path)
    return [
        StoredTensor(tensor.name, tensor.tensor_type.name, int(tensor.n_elements), len(tensor.shape),
                     gguf_type_bits(tensor.tensor_type))
        for tensor in reader.tensors
    ]  # fmt: skip


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file: an 8-byte little-endian length, then that many bytes of JSON."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        return json.loads(handle.read(length))


def safetensors_tensors(directory: Path) -> list[StoredTensor]:
    """The tensors of every ``*.safetensors`` file of a checkpoint folder, ``8·bytes/elements`` bits each."""
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise PvqError(f"{directory} holds no *.safetensors file to read the stored size from")
    tensors = []
    for path in files:
        for name, entry in safetensors_header(path).items():
            if name == "__metadata__":
                continue
            elements = 1
            for extent in entry["shape"]:
                elements *= extent
            start, end = entry["data_offsets"]
            bits = 8 * (end - start) / elements if elements else 0.0
            tensors.append(StoredTensor(name, entry["dtype"], elements, len(entry["shape"]), bits))
    return tensors


def _stored_size_at(path: Path) -> StoredSize:
    """:func:`summarize` of a GGUF file or a safetensors folder, memoized by path and modification time."""
    return _stored_size_memo(path.resolve(), path.stat().st_mtime_ns)


@cache
def _stored_size_memo(path: Path, mtime_ns: int) -> StoredSize:
    if path.suffix == ".gguf":
        return summarize("GGUF", gguf_tensors(path))
    return summarize("safetensors", safetensors_tensors(path))


def stored_bits_per_parameter(model_id_or_path: str) -> StoredSize:
    """The stored size of a model as :func:`measure.models.load.load_model` names it (module docstring).

    An embedded default → its pinned GGUF (fetched if absent); a ``.gguf`` file → that file; a folder → its
    safetensors headers; a hub id → the safetensors of its snapshot in the local Hugging Face cache.
    """
    if model_id_or_path in DEFAULT_MODELS:
        asset = DEFAULT_MODELS[model_id_or_path].asset
        return _stored_size_at(asset.path if asset.path.exists() else ensure_asset(asset))
    path = Path(model_id_or_path).expanduser()
    if path.suffix == ".gguf" or path.is_dir():
        if not path.exists():
            raise PvqError(f"{path} does not exist")
        return _stored_size_at(path)
    return _stored_size_at(_hub_snapshot(model_id_or_path))


def _hub_snapshot(model_id: str) -> Path:
    """The local snapshot folder of a hub model's safetensors (no download: the model was loaded before)."""
    try:
        return Path(snapshot_download(model_id, allow_patterns=["*.safetensors"], local_files_only=True))
    except LocalEntryNotFoundError as error:
        message = f"{model_id!r} has no safetensors in the local Hugging Face cache; load it first"
        raise PvqError(message) from error
