"""The full joint-frontier grid as an experiment: SparseGPT × GPTQ and BI block removal × GPTQ (33 specs).

No figure reads it, so ``make figures`` does not run it (the grid takes far longer than the figures' budget);
run it with ``pvq run pvq/scale/experiment_files/joint_frontier.toml`` or ``ensure(lookup(["joint_frontier"]),
context)``. The table is :func:`measure.studies.grids.joint_frontier_grid` on the catalog's calibration and
evaluation protocol (:data:`figures.catalog.models.CALIBRATION`, :data:`figures.catalog.models.EVALUATION`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from figures.catalog.models import (
    CALIBRATION,
    EVALUATION,
    calibration,
    check_specs,
    evaluation_windows,
    spec_check,
)
from figures.experiments import ExperimentContext, experiment
from measure.mixture.joint_grid import frontier_specs
from measure.studies.grids import joint_frontier_grid

JOINT_FRONTIER = "joint_frontier"


def synthetic_joint_frontier(rng: np.random.Generator) -> pd.DataFrame:
    """A small stand-in for :func:`joint_frontier` (same columns, made-up values)."""
    rows = [("gptq:4:g128", 0, 0.0, 0.0, "none", 4, 4.2, 4.2),
            ("sparsegpt:0.5+gptq:4:g128", 0, 0.0, 0.5, "unstructured", 4, 2.2, 3.2),
            ("sparsegpt:2:4+gptq:4:g128", 0, 0.0, 0.5, "2:4", 4, 2.2, 3.2),
            ("remove:bi:2+gptq:4:g128", 2, 0.07, 0.0, "none", 4, 3.9, 3.9)]  # fmt: skip
    columns = ["spec", "removed_blocks", "removed_fraction", "sparsity", "pattern", "bits",
               "bits_per_decoder_parameter_free", "bits_per_decoder_parameter_entropy"]  # fmt: skip
    frame = pd.DataFrame(rows, columns=columns)
    kl = rng.uniform(0.05, 0.5, len(frame))
    return frame.assign(ppl=20.0 * np.exp(kl), kl=kl, base_ppl=20.0, pareto_free=[True, True, False, True],
                        pareto_entropy=[True, False, False, True])  # fmt: skip


@experiment(JOINT_FRONTIER, needs_model=True, synthetic=synthetic_joint_frontier, check=spec_check("specs"),
            config={"specs": frontier_specs(), "calibration": CALIBRATION, "evaluation": EVALUATION})  # fmt: skip
def joint_frontier(config: Mapping[str, Any], context: ExperimentContext) -> pd.DataFrame:
    """One row per spec of the grid (:data:`measure.mixture.joint_frontier.COLUMNS`): sizes per mask convention,
    PPL and
    KL to the original on the evaluation windows, Pareto flags."""

    loaded = context.model
    check_specs(loaded, config["specs"])
    return joint_frontier_grid(loaded.model, calibration(loaded, config["calibration"]),
                               evaluation_windows(loaded, config["evaluation"]), config["specs"],
                               config["calibration"]["mode"], config["calibration"]["batch_size"],
                               on_spec=context.step)  # fmt: skip
