"""Mixtures of pruning, quantization and removal under a size budget.

Uniform mixtures, one spec for every layer:

* :mod:`measure.mixture.joint_grid` — the joint-frontier grid (SparseGPT s or 2:4, or BI block removal, then GPTQ);
* :mod:`measure.mixture.joint_frontier` — each grid spec's size per mask convention, PPL and KL, Pareto flags.

Per-layer allocation: every linear layer takes one option of a menu (keep at 16 bits, quantize, prune, or prune
then quantize), minimising the predicted damage Σ_ℓ c_ℓ·e_ℓ(option) subject to Σ_ℓ params_ℓ·bits_ℓ ≤ B·Σ_ℓ
params_ℓ (B in bits per weight over the decoder's linear weights):

* :mod:`measure.mixture.menu` — the menu: option specs and their bits per weight on each layer;
* :mod:`measure.mixture.sensitivity` — c_ℓ: output energy share, or KL per unit local error calibrated on
  single-layer perturbations;
* :mod:`measure.mixture.inputs` — the menu measured once (ledger errors, bits, sensitivities);
* :mod:`measure.mixture.solve` — e_ℓ from the ledger, integer costs, the exact knapsack (:mod:`theory.knapsack`);
* :mod:`measure.mixture.file` — the allocation file and the spec of per-layer terms it applies as.
"""
