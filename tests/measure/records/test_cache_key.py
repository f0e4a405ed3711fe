"""The one cache key: every field changes the digest; data sources are recorded where they are read; derived files
are named by the code and library versions that produced them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from tiny_models import save_tiny_model, tiny_model

from measure.data import text
from measure.models import load
from measure.models.defaults import DEFAULT_MODEL, DEFAULT_MODELS
from measure.records import cache_key
from measure.records.cache_key import CacheKey, data_digests, derived_name, environment, note_read, reading
from theory.errors import PvqError

BASE = CacheKey(
    kind="perplexity", config={"spec": "rtn:4:g128"}, seed=None, weights="w", code="c", data={"text": "t"},
    environment={"torch": "2", "device": "cpu", "dtype": "float32"},
)  # fmt: skip


@pytest.mark.parametrize(
    "change",
    [{"kind": "csqa"}, {"config": {"spec": "rtn:3:g128"}}, {"seed": 0}, {"weights": "w2"}, {"code": "c2"},
     {"data": {"text": "t2"}}, {"environment": {"torch": "2", "device": "cuda", "dtype": "float32"}}],
)  # fmt: skip
def test_every_field_of_the_key_changes_its_digest(change: dict) -> None:
    assert dataclasses.replace(BASE, **change).digest != BASE.digest
    assert dataclasses.replace(BASE).digest == BASE.digest


def test_the_environment_names_the_device_type_and_the_dtype() -> None:
    env = environment("cuda:1", "torch.bfloat16")
    assert (env["device"], env["dtype"]) == ("cuda", "bfloat16")
    assert {"torch", "transformers", "lm_eval"} <= set(env)


def test_reads_are_recorded_only_inside_a_reading_block_and_unknown_sources_are_refused(monkeypatch) -> None:
    monkeypatch.setitem(cache_key.DATA_SOURCES, "toy data", lambda: "digest-1")
    note_read("toy data")
    with reading() as outer, reading() as inner:
        note_read("toy data")
    assert outer == inner == {"toy data"}
    assert data_digests(outer) == {"toy data": "digest-1"}
    with pytest.raises(PvqError, match="unknown data source"):
        note_read("no such data")


def test_a_file_digest_follows_an_edit_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "task.yaml"
    path.write_text("prompt: one\n")
    before = cache_key.file_sha256(path)
    assert before == cache_key.sha256_file(path)
    path.write_text("prompt: two, longer\n")
    assert cache_key.file_sha256(path) == cache_key.sha256_file(path) != before


def test_a_derived_file_is_named_by_its_producer_code_and_library_versions(monkeypatch) -> None:
    name = derived_name("wiki_articles", text.clean_articles, "dump-sha")
    assert name.startswith("wiki_articles-")
    assert name == derived_name("wiki_articles", text.clean_articles, "dump-sha")
    assert derived_name("wiki_articles", text.clean_articles, "other-dump") != name
    assert derived_name("wiki_articles", text.clean_wikitext, "dump-sha") != name
    converted = load.conversion_directory("smollm2-135m", "gguf-sha")
    monkeypatch.setattr(cache_key, "package_version", lambda package: "9.9.9")
    assert load.conversion_directory("smollm2-135m", "gguf-sha") != converted


def test_a_default_model_is_keyed_by_its_converted_weights_not_its_gguf_digest(tmp_path, monkeypatch) -> None:
    """A new dequantizer writes other weights from the same GGUF: the model hash stays, the weights hash moves."""
    monkeypatch.setenv("PVQ_CACHE", str(tmp_path / "pvq-cache"))
    converted = tmp_path / "converted"
    monkeypatch.setattr(load, "ensure_default_checkpoint", lambda name: converted)
    monkeypatch.setattr(load, "stored_bits_per_parameter", lambda name: None)
    save_tiny_model("llama", converted)
    first = load.load_model(DEFAULT_MODEL)
    assert first.weights_sha256 == load.directory_hash(converted)
    tiny_model("llama", seed=1).save_pretrained(converted)
    second = load.load_model(DEFAULT_MODEL)
    assert first.model_hash == second.model_hash == DEFAULT_MODELS[DEFAULT_MODEL].model_hash
    assert second.weights_sha256 == load.directory_hash(converted) != first.weights_sha256
