"""Load any causal LM by name: an embedded default, a local safetensors directory, a .gguf file or a hub id.

GGUF files are converted once to safetensors (transformers' GGUF reader takes 12–40 s; the converted
checkpoint reloads in about a second with identical logits). The converted folder is named by the GGUF's sha256,
the converting code and the torch / transformers / gguf versions (:func:`conversion_directory`), so a new
dequantizer converts again; ``weights_sha256`` of the loaded model is the content hash of the weight files
actually read, the identity that keys cached results. The conversion clears the GGUF
quantizer markers (``hf_quantizer``, ``config.quantization_config``, ``is_quantized``) that make
``save_pretrained`` refuse the dequantized model, and is written to a temporary folder renamed into
place, so an interrupted conversion leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from measure.models.defaults import DEFAULT_MODELS, get_default
from measure.models.fetch import cache_root, ensure_asset, sha256_file
from measure.models.stored_size import StoredSize, stored_bits_per_parameter
from measure.records.atomic import atomic_dir, write_text_atomic
from measure.records.cache_key import derived_name
from theory.errors import PvqError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")
CONVERSION_PACKAGES = ("torch", "transformers", "gguf")
"""Packages whose code dequantizes and writes a converted GGUF checkpoint."""


@dataclass
class LoadedModel:
    """A model with what results need to name it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    model_id: str
    model_hash: str
    bos_per_window: bool
    source: str
    stored_size: StoredSize | None = None
    weights_sha256: str | None = None
    """Content hash of the weight files loaded (:func:`directory_hash`); None for a hub model (its commit
    in ``model_hash`` names the files)."""

    def describe(self) -> dict[str, Any]:
        """Provenance fields for this model: id, hash, source and stored size (None where the checkpoint's files
        do not say it, e.g. a folder of ``*.bin`` files)."""
        stored = None if self.stored_size is None else self.stored_size.as_dict()
        return {"model_id": self.model_id, "model_hash": self.model_hash, "model_source": self.source,
                "stored_size": stored}  # fmt: skip


def strip_gguf_quantizer(model: PreTrainedModel) -> None:
    """Let ``save_pretrained`` write a GGUF-loaded (already dequantized) model as plain safetensors."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


def convert_gguf(gguf_path: Path, directory: Path) -> None:
    """Dequantize ``gguf_path`` through transformers and save it as safetensors into ``directory``."""
    with atomic_dir(directory) as tmp:
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        strip_gguf_quantizer(model)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        meta = {"source_gguf": gguf_path.name, "source_sha256": sha256_file(gguf_path)}
        (tmp / "pvq_source.json").write_text(json.dumps(meta, indent=2))


def conversion_directory(stem: str, gguf_sha256: str) -> Path:
    """``$PVQ_CACHE/models/<stem>-<digest>``: where the GGUF of sha256 ``gguf_sha256`` is converted, keyed by the
    code of :func:`convert_gguf` and the versions of :data:`CONVERSION_PACKAGES`."""
    return cache_root() / "models" / derived_name(stem, convert_gguf, gguf_sha256, packages=CONVERSION_PACKAGES)


def ensure_converted(gguf_path: Path, directory: Path) -> Path:
    """``directory`` holding the conversion of ``gguf_path``, converting on first use."""
    if not (directory / "pvq_source.json").exists():
        convert_gguf(gguf_path, directory)
    return directory


def ensure_default_checkpoint(name: str) -> Path:
    """The converted safetensors folder of a default model, fetching and converting on first use."""
    default = get_default(name)
    directory = conversion_directory(default.name, default.asset.sha256)
    if (directory / "pvq_source.json").exists():
        return directory
    return ensure_converted(ensure_asset(default.asset), directory)


def detect_bos_per_window(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when the tokenizer itself prepends BOS, i.e. the model was trained to expect it."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("The").input_ids
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def directory_hash(directory: Path) -> str:
    """sha256 over the weight files of a checkpoint folder (memoized by path, size and mtime)."""
    files = sorted(p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise PvqError(f"{directory} holds no weight files (*.safetensors, *.bin); is it a model folder?")
    key = json.dumps([[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files])
    memo_file = cache_root() / "hashes" / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".txt")
    if memo_file.exists():
        return memo_file.read_text().strip()
    digest = hashlib.sha256()
    for path in files:
        digest.update(sha256_file(path).encode())
    value = digest.hexdigest()[:16]
    write_text_atomic(memo_file, value)
    return value


@dataclass(frozen=True)
class LoadTarget:
    """Where a checkpoint's weights go: one ``device``, or an accelerate ``device_map`` (e.g. ``"auto"``
    spreads the blocks over every visible GPU), in precision ``dtype``."""

    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    device_map: str | None = None


def _pretrained(source: str | Path, target: LoadTarget) -> PreTrainedModel:
    """``from_pretrained`` in ``target.dtype``, moved to ``target.device`` or dispatched by its device map; a
    vision-language checkpoint that has no causal-LM class (LLaVA) loads as an image-text-to-text model."""
    config = AutoConfig.from_pretrained(source)
    causal = type(config) in AutoModelForCausalLM._model_mapping
    auto = AutoModelForCausalLM if causal else AutoModelForImageTextToText
    if target.device_map is None:
        model = auto.from_pretrained(source, dtype=target.dtype).to(target.device)
    else:
        model = auto.from_pretrained(source, dtype=target.dtype, device_map=target.device_map)
    return model.eval()


def _from_directory(directory: Path, target: LoadTarget) -> tuple[PreTrainedModel, Any]:
    return _pretrained(directory, target), AutoTokenizer.from_pretrained(directory)


def dtype_name(dtype: torch.dtype) -> str:
    """``float16`` for ``torch.float16``."""
    return str(dtype).removeprefix("torch.")


def load_model(
    name_or_path: str, device: str = "cpu", dtype: torch.dtype = torch.float32, device_map: str | None = None
) -> LoadedModel:
    """Load a causal LM (see the module docstring for the accepted forms) in eval mode.

    The model lands on ``device`` in ``dtype``; with ``device_map`` (``"auto"``: accelerate spreads the blocks
    over the visible GPUs) ``device`` is ignored. Weights held in another precision than float32 are not the
    checkpoint's float32 weights, and the model hash keys every cached result, so such a load gets
    ``+<dtype>`` on its hash (``…+bfloat16``).
    """
    loaded = _load(name_or_path, LoadTarget(device, dtype, device_map))
    if dtype != torch.float32:
        loaded.model_hash = f"{loaded.model_hash}+{dtype_name(dtype)}"
    return loaded


def _load(name_or_path: str, target: LoadTarget) -> LoadedModel:
    loaded = _load_weights(name_or_path, target)
    try:
        loaded.stored_size = stored_bits_per_parameter(name_or_path)
    except PvqError:
        if loaded.source in ("default", "gguf"):
            raise
    return loaded


def _load_weights(name_or_path: str, target: LoadTarget) -> LoadedModel:
    if name_or_path in DEFAULT_MODELS:
        default = DEFAULT_MODELS[name_or_path]
        directory = ensure_default_checkpoint(name_or_path)
        model, tokenizer = _from_directory(directory, target)
        return LoadedModel(model, tokenizer, name_or_path, default.model_hash, default.bos_per_window, "default",
                           weights_sha256=directory_hash(directory))  # fmt: skip
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise PvqError(f"GGUF file {path} does not exist")
        sha256 = sha256_file(path)
        directory = ensure_converted(path, conversion_directory("gguf", sha256))
        model, tokenizer = _from_directory(directory, target)
        return LoadedModel(model, tokenizer, path.name, sha256[:16], detect_bos_per_window(tokenizer), "gguf",
                           weights_sha256=directory_hash(directory))  # fmt: skip
    if path.is_dir():
        model, tokenizer = _from_directory(path, target)
        digest = directory_hash(path)
        bos = detect_bos_per_window(tokenizer)
        return LoadedModel(model, tokenizer, str(path), digest, bos, "directory", weights_sha256=digest)
    if "/" not in name_or_path:
        get_default(name_or_path)
    return _from_hub(name_or_path, target)


def _from_hub(model_id: str, target: LoadTarget) -> LoadedModel:
    try:
        model = _pretrained(model_id, target)
        tokenizer = AutoTokenizer.from_pretrained(model_id)
    except OSError as error:
        raise PvqError(
            f"could not load {model_id!r} from the Hugging Face hub ({str(error).splitlines()[0]}); "
            f"without internet use a default ({', '.join(DEFAULT_MODELS)}), a local folder or a .gguf file"
        ) from error
    commit = getattr(model.config, "_commit_hash", None) or "unknown"
    return LoadedModel(model, tokenizer, model_id, str(commit)[:16], detect_bos_per_window(tokenizer), "hub")
