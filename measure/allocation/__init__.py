"""Per-layer allocation under a size budget: every linear layer takes one option of a menu (keep at 16 bits,
quantize, prune, or prune then quantize), minimising the predicted damage Σ_ℓ c_ℓ·e_ℓ(option) subject to
Σ_ℓ params_ℓ·bits_ℓ ≤ B·Σ_ℓ params_ℓ (B in bits per weight over the decoder's linear weights).

* :mod:`measure.allocation.menu` — the menu: option specs and their bits per weight on each layer;
* :mod:`measure.allocation.sensitivity` — c_ℓ: output energy share, or KL per unit local error calibrated on
  single-layer perturbations;
* :mod:`measure.allocation.solve` — e_ℓ from the ledger, integer costs, the exact knapsack
  (:mod:`theory.knapsack`);
* :mod:`measure.allocation.file` — the allocation file and the spec of per-layer terms it applies as.
"""
