"""Experiments computed end to end on a loaded model: each takes plain arguments (the model or the loaded model,
calibration batches, evaluation windows, settings) and returns its table as a DataFrame. The figure catalog
declares them (config, tables, figures, captions); the computation lives here.

* :mod:`measure.studies.layers` — the blocks and layers a study looks at, and the parameters by part;
* :mod:`measure.studies.inputs` — the original model's Grams when compression is calibrated in parallel;
* :mod:`measure.studies.frontier` — PPL and KL against compressed size, one spec at a time;
* :mod:`measure.studies.benchmarks` — size, PPL, KL and lm-eval accuracy of compression variants;
* :mod:`measure.studies.mixture_frontier` — per-layer allocations and uniform specs of a menu, measured end to
  end;
* :mod:`measure.studies.grids` — the joint-frontier grid and the width-pruning comparison on the original Grams.
"""
