"""Every registered experiment, run for real on a tiny configuration, gives the columns and dtypes of its
synthetic stand-in (the table every figure test renders from).

Model experiments run on a tiny random Llama saved as a local model folder (:mod:`tiny_models`), with a few
dozen calibration and evaluation tokens of a fixed text and the fewest bits, layers and specs of their
config; model-free experiments run as they are. The table compared is the one the experiment cache stored
and reads back, as ``pvq figures`` renders it.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from tiny_models import save_tiny_model

from figures.experiments import EXPERIMENTS, ExperimentContext, run_one
from figures.registry import load_catalog
from measure.data import text

load_catalog()
TEXT = "The history of the calibration text is long, and it is real English prose. " * 60
CALIBRATION = {"sequences": 2, "sequence_length": 32, "batch_size": 2, "mode": "parallel"}
EVALUATION = {"window": 32, "max_windows": 1}
TINY: dict[str, dict[str, Any]] = {
    "compression_benchmarks": {"variants": ["", "gptq:4:g16", "remove:bi:1"], "tasks": {"csqa": 2}},
    "weight_tensor_study": {"bits": [2]},
    "layer_bounds_sweep": {"roles": ["q"], "bits": [2], "sdp_bits": [2], "opt_dim": 8, "rows": 2,
                           "max_chunks": 1, "sequences": 2, "sequence_length": 32, "time_limit": 1.0},
    "compression_frontier": {"specs": ["rtn:4:g16", "magnitude:0.5", "sparsegpt:0.5+gptq:4:g16"]},
    "joint_frontier": {"specs": ["gptq:4:g16", "sparsegpt:2:4+gptq:3:g16", "remove:bi:1+gptq:4:g16"]},
    "width_pruning": {"options": ["mlp=0.25", "heads=0.5"]},
    "removal_study": {"settings": {"max_removed": 1, "orderings": ["bi"], "probe_windows": 1, "answer_levels": [1],
                                   "end_to_end_orderings": ["bi"],
                                   "quantizer_bits": {"rtn": [4], "gptq": [4]}, "pruner_sparsities": [0.5],
                                   "block_sequences": 1, "workers": 1}},
    "mixture_frontier": {"menu": "keep,rtn:3:g16,rtn:4:g16,magnitude:0.5+rtn:4:g16,remove", "budgets": [2.0, 5.0],
                         "energy_budgets": [5.0], "probe": {"window": 32, "max_windows": 1}},
}  # fmt: skip
"""Per model experiment, the config entries replaced (nested entries merged); every model experiment also gets
the tiny :data:`CALIBRATION` and :data:`EVALUATION` protocol where its config has one."""


def tiny_config(name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with the tiny protocol and the overrides of :data:`TINY` (each must name an existing key)."""
    merged = copy.deepcopy(dict(config))
    protocol = {"calibration": CALIBRATION, "evaluation": EVALUATION}
    overrides = {**{key: value for key, value in protocol.items() if key in merged}, **TINY.get(name, {})}
    for key, value in overrides.items():
        assert key in merged, f"{name}: no config entry {key!r} to make tiny"
        if isinstance(value, Mapping) and key not in protocol:
            unknown = set(value) - set(merged[key])
            assert not unknown, f"{name}: no config entries {sorted(unknown)} under {key!r}"
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


@pytest.fixture(scope="module")
def tiny_context(tmp_path_factory: pytest.TempPathFactory) -> ExperimentContext:
    model = save_tiny_model("llama", tmp_path_factory.mktemp("models") / "tiny-llama")
    return ExperimentContext(model_name=str(model), results_root=tmp_path_factory.mktemp("results"))


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_real_table_has_the_columns_and_dtypes_of_the_synthetic_one(name, tiny_context, monkeypatch) -> None:
    monkeypatch.setattr(text, "calibration_text", lambda: TEXT)
    monkeypatch.setattr(text, "evaluation_text", lambda: TEXT)
    exp = EXPERIMENTS[name]
    if exp.needs_model:
        exp = dataclasses.replace(exp, config=tiny_config(name, exp.config))
    real = run_one(exp, tiny_context).table()
    synthetic = exp.synthetic(np.random.default_rng(0))
    assert len(real) > 0
    assert dict(real.dtypes.astype(str)) == dict(synthetic.dtypes.astype(str))


def test_tiny_configs_name_registered_experiments() -> None:
    assert set(TINY) <= set(EXPERIMENTS)


@pytest.fixture(scope="module")
def one_kv_group_context(tmp_path_factory: pytest.TempPathFactory) -> ExperimentContext:
    """A tiny model shaped like Gemma-3-270M: one KV group, per-head q/k norms, an explicit head_dim."""
    model = save_tiny_model("gemma3", tmp_path_factory.mktemp("models") / "tiny-gemma3-kv1", num_attention_heads=4,
                            num_key_value_heads=1, head_dim=8)  # fmt: skip
    return ExperimentContext(model_name=str(model), results_root=tmp_path_factory.mktemp("results"))


@pytest.mark.parametrize("name", [name for name, exp in EXPERIMENTS.items() if exp.needs_model])
def test_every_model_experiment_runs_on_a_model_with_one_kv_group(name, one_kv_group_context, monkeypatch) -> None:
    monkeypatch.setattr(text, "calibration_text", lambda: TEXT)
    monkeypatch.setattr(text, "evaluation_text", lambda: TEXT)
    exp = dataclasses.replace(EXPERIMENTS[name], config=tiny_config(name, EXPERIMENTS[name].config))
    real = run_one(exp, one_kv_group_context).table()
    assert len(real) > 0
    assert set(real.columns) == set(exp.synthetic(np.random.default_rng(0)).columns)
