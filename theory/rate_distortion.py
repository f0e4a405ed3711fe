"""The Gaussian rate–distortion reference of a linear layer: reverse water-filling in the eigenbasis of its Gram.

A linear layer with weight W (rows × in) and input Gram H = V Λ Vᵀ has output error
``tr(ΔW H ΔWᵀ) = Σ_rows Σ_j λ_j (v_jᵀ e)²`` (Kuzmin et al., NeurIPS 2023, Sec. 4): in H's eigenbasis the output
error of a row is a weighted squared error over its coordinates c_j = v_jᵀ w. Take as source model rows whose
coordinates are independent Gaussians with the layer's second moments, ``c_j ~ N(0, s_j²)``,
``s_j² = mean over rows of (v_jᵀ w_i)²``. The output error is then the squared error of independent Gaussian
components of variances σ_j² = λ_j s_j² (:func:`layer_spectrum`; Σ_j σ_j² = tr(W H Wᵀ)/rows, the mean row output
energy), and the least error any code of R bits per row can reach is given by reverse water-filling on the σ_j²
(Cover & Thomas, *Elements of Information Theory*, 2nd ed., Thm 10.3.3; :func:`water_filling`). With
``R = b·in`` bits per row (b bits per weight) the relative output error ``D/Σσ_j²`` is :func:`rd_relative_error`
and its SQNR in dB :func:`rd_sqnr_db`: a per-layer reference, every layer at the same rate. The decoder-level
reference :func:`decoder_rd_relative_error` water-fills one bit budget jointly over all components of all layers
(:func:`joint_rd_relative_errors`), weighting each layer's error as an aggregated view does. Radio (ICML 2025)
and WaterSIC (ICML 2026) take the same water-filling view of layer-wise quantization.

What it is and what it is not. It is a *reference*: the limit for Gaussian weights whose coordinates in H's
eigenbasis are independent with the layer's per-coordinate second moments, measured on the output error
``tr(ΔW H ΔWᵀ)`` relative to the output energy ``tr(W H Wᵀ)``. It is not a bound on the actual weights: real
weights are not Gaussian and their coordinates are not independent, so a real quantizer may beat it; its bits
per weight count every bit of the code, overhead (scales, masks) included. (Independent coordinates rather than
the full second-moment matrix Σ_w = WᵀW/rows: with fewer rows than inputs Σ_w has rank at most ``rows``, and a
Gaussian with that covariance would confine the rows to a subspace that only the sample spans.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from theory.chunk_problem import NEGATIVE_TOLERANCE
from theory.errors import PvqError, choose
from theory.sqnr import sqnr_db

SYMMETRY_TOLERANCE = 1e-8
"""Largest ``max|H − Hᵀ| / max|H|`` accepted as a symmetric Gram (as :func:`theory.chunk_problem.damped_gram`)."""


def _check_rate(rate: float, what: str) -> float:
    """``rate`` as a float, or a PvqError unless it is a finite number >= 0."""
    number = not isinstance(rate, bool) and isinstance(rate, int | float | np.integer | np.floating)
    if not (number and math.isfinite(rate) and rate >= 0):
        raise PvqError(f"{what} must be a finite number >= 0, got {rate!r}")
    return float(rate)


def _check_spectrum(values: np.ndarray, what: str) -> np.ndarray:
    """``values`` as a non-empty 1-D float64 array of finite numbers >= 0, else a PvqError."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise PvqError(f"{what} must be a non-empty vector, got shape {array.shape}")
    if not np.all(np.isfinite(array)) or array.min() < 0:
        raise PvqError(f"{what} must be finite and >= 0")
    return array


def water_filling(
    variances: np.ndarray, rate_bits: float, counts: np.ndarray | None = None
) -> tuple[float, float]:
    """Reverse water-filling for independent Gaussian components of variances σ_j² (Cover & Thomas, Thm 10.3.3).

    The water level θ solves ``R(θ) = Σ_j m_j·max(0, ½·log2(σ_j²/θ)) = rate_bits`` (total bits for the whole
    vector) and the distortion is ``D(θ) = Σ_j m_j·min(θ, σ_j²)``, with ``m_j`` the number of components of
    variance σ_j² (``counts``; all 1 when None). Returns ``(theta, distortion)``.
    Closed form on the descending spectrum: with the components of the k largest variances active,
    ``log2 θ_k = (Σ_{j≤k} m_j·log2 σ_j² − 2R)/Σ_{j≤k} m_j``; the answer is the largest k with ``θ_k < σ_k²`` (then
    ``σ_{k+1}² ≤ θ_k``). ``rate_bits = 0`` gives ``θ = max σ²`` and ``D = Σ m_j σ_j²``; all-zero variances give
    (0, 0).
    """
    rate = _check_rate(rate_bits, "the rate in bits")
    values = _check_spectrum(variances, "the variances")
    multiplicity = np.ones_like(values) if counts is None else _check_spectrum(counts, "the counts")
    if multiplicity.shape != values.shape:
        raise PvqError(f"counts must match the variances, got shapes {multiplicity.shape} and {values.shape}")
    order = np.argsort(values, kind="stable")[::-1]
    spectrum, multiplicity = values[order], multiplicity[order]
    positive = spectrum > 0
    if not positive.any():
        return 0.0, 0.0
    logs, weights = np.log2(spectrum[positive]), multiplicity[positive]
    active = np.cumsum(weights)
    log_levels = (np.cumsum(weights * logs) - 2.0 * rate) / active
    below = np.flatnonzero(log_levels < logs)
    total = float(multiplicity @ spectrum)
    if below.size == 0:
        return float(spectrum[0]), total
    count = int(below[-1]) + 1
    theta = float(np.exp2(log_levels[count - 1]))
    return theta, float(active[count - 1]) * theta + float(weights[count:] @ spectrum[positive][count:])


def _check_gram(gram: np.ndarray, in_features: int) -> np.ndarray:
    """The Gram as a symmetric float64 (in × in) matrix, else a PvqError.

    Positive semidefinite up to rounding: ``H + 1e-6·max(diag H)·I`` must have a Cholesky factor (a cheaper
    test than an eigendecomposition; it rejects eigenvalues below about −1e-6·λ_max, as
    :func:`theory.chunk_problem.make_chunk_problem` does).
    """
    matrix = np.asarray(gram, dtype=np.float64)
    if matrix.shape != (in_features, in_features):
        raise PvqError(f"the Gram must be square and match the weight's {in_features} input features, "
                       f"got shape {matrix.shape}")  # fmt: skip
    if not np.all(np.isfinite(matrix)):
        raise PvqError("the Gram has NaN or infinite entries; recompute it from finite activations")
    if np.abs(matrix - matrix.T).max() > SYMMETRY_TOLERANCE * float(np.abs(matrix).max()):
        raise PvqError("the Gram is not symmetric; pass H = XᵀX")
    matrix = (matrix + matrix.T) / 2
    shift = NEGATIVE_TOLERANCE * max(float(np.diag(matrix).max()), np.finfo(np.float64).tiny)
    try:
        np.linalg.cholesky(matrix + shift * np.eye(in_features))
    except np.linalg.LinAlgError as error:
        raise PvqError("the Gram is not positive semidefinite; pass H = XᵀX") from error
    return matrix


def layer_spectrum(gram: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Component variances σ_j² = λ_j·s_j² (float64, descending, clipped at 0) of the layer's source model.

    H = V Λ Vᵀ is the layer's input Gram (in × in) and s_j² = mean over rows of (v_jᵀ w_i)² the second moment of
    the rows' j-th coordinate in H's eigenbasis (module docstring); Σ_j σ_j² = tr(W H Wᵀ)/rows."""
    matrix = np.asarray(weight, dtype=np.float64)
    if matrix.ndim != 2 or matrix.size == 0:
        raise PvqError(f"the layer weight must be a non-empty matrix (out, in), got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise PvqError("the layer weight has NaN or infinite entries")
    eigenvalues, eigenvectors = np.linalg.eigh(_check_gram(gram, matrix.shape[1]))
    second_moments = ((matrix @ eigenvectors) ** 2).mean(axis=0)
    return np.sort(np.clip(eigenvalues, 0.0, None) * second_moments)[::-1]


def rd_relative_error(spectrum: np.ndarray, bits_per_weight: float) -> float:
    """``D/Σμ_j`` at ``R = bits_per_weight·len(spectrum)`` bits per row (:func:`water_filling` on the μ_j).

    The relative output error ``tr(ΔW H ΔWᵀ)/tr(W H Wᵀ)`` that the Gaussian rate–distortion function allows
    at that rate (module docstring: a reference for Gaussian rows, not a bound on real weights).
    """
    bits = _check_rate(bits_per_weight, "bits per weight")
    values = _check_spectrum(spectrum, "the layer spectrum")
    energy = float(values.sum())
    if energy <= 0:
        raise PvqError("the layer has zero output energy tr(W H Wᵀ): no relative error to define")
    _, distortion = water_filling(values, bits * values.size)
    return distortion / energy


def rd_sqnr_db(spectrum: np.ndarray, bits_per_weight: float) -> float:
    """``−10·log10`` of :func:`rd_relative_error`: the output SQNR [dB] of the Gaussian RD reference."""
    return sqnr_db(1.0, rd_relative_error(spectrum, bits_per_weight))


DECODER_WEIGHTINGS = ("energy", "parameters")
"""Aggregates of the layers' relative errors: weighted by output energy ``tr(W H Wᵀ)`` or by parameter count."""


def joint_rd_relative_errors(
    spectra: Sequence[np.ndarray], rows: Sequence[int], bits_per_weight: float, layer_weights: Sequence[float]
) -> np.ndarray:
    """Per-layer relative errors ``D_ℓ/E_ℓ`` of the Gaussian reference, the rate water-filled jointly over layers.

    Layer ℓ has ``rows[ℓ]`` rows, each with the independent Gaussian components of variances σ_ℓj² of
    ``spectra[ℓ]`` (:func:`layer_spectrum`, ``n_ℓ`` inputs); its output energy is ``E_ℓ = rows_ℓ·Σ_j σ_ℓj²``. The
    budget ``R = b·Σ_ℓ rows_ℓ·n_ℓ`` bits (b bits per linear weight on average) is spread over all components of all
    layers to minimize ``Σ_ℓ w_ℓ·D_ℓ/E_ℓ`` (``w`` = ``layer_weights``). Weighting a squared error by c is the
    squared error of a source scaled by √c, so the optimum is reverse water-filling (:func:`water_filling`) on the
    variances ``c_ℓ·σ_ℓj²``, ``c_ℓ = w_ℓ/E_ℓ``, each ``rows_ℓ`` times: ``D_ℓ = rows_ℓ·Σ_j min(θ, c_ℓσ_ℓj²)/c_ℓ``.
    A layer of weight 0 gets no bits (relative error 1). With one layer, or identical layers, this is
    :func:`rd_relative_error` at b for every layer; otherwise the w-weighted aggregate is never above that of the
    per-layer reference at the same b (a uniform rate is one of the allocations searched).
    """
    bits = _check_rate(bits_per_weight, "bits per weight")
    values = [_check_spectrum(spectrum, "a layer spectrum") for spectrum in spectra]
    if not values or len(rows) != len(values) or len(layer_weights) != len(values):
        raise PvqError(f"need one row count and one weight per layer spectrum, got {len(values)} spectra, "
                       f"{len(rows)} row counts and {len(layer_weights)} weights")  # fmt: skip
    counts = np.array([_check_rate(count, "a row count") for count in rows])
    weights = np.array([_check_rate(weight, "a layer weight") for weight in layer_weights])
    energies = counts * np.array([spectrum.sum() for spectrum in values])
    if np.any(energies <= 0):
        raise PvqError("a layer has zero output energy tr(W H Wᵀ): no relative error to define")
    scales = weights / energies
    theta, _ = water_filling(
        np.concatenate([scale * spectrum for scale, spectrum in zip(scales, values, strict=True)]),
        bits * float(counts @ [spectrum.size for spectrum in values]),
        np.concatenate([np.full(spectrum.size, count) for count, spectrum in zip(counts, values, strict=True)]),
    )
    return np.array([
        1.0 if scale == 0 else count * float(np.minimum(theta, scale * spectrum).sum()) / scale / energy
        for scale, count, spectrum, energy in zip(scales, counts, values, energies, strict=True)
    ])  # fmt: skip


def decoder_rd_relative_error(
    spectra: Sequence[np.ndarray], rows: Sequence[int], bits_per_weight: Sequence[float], weighting: str
) -> np.ndarray:
    """The decoder-level Gaussian reference: the aggregate relative error ``Σ_ℓ w_ℓ·D_ℓ/E_ℓ / Σ_ℓ w_ℓ`` at each
    average rate in ``bits_per_weight`` (bits per linear weight), the rate water-filled jointly over all layers
    (:func:`joint_rd_relative_errors`).

    ``weighting="energy"``: ``w_ℓ = E_ℓ = tr(W_ℓ H_ℓ W_ℓᵀ)``, the aggregate is ``Σ D_ℓ / Σ E_ℓ`` (the layer view,
    energy-weighted); ``"parameters"``: ``w_ℓ = rows_ℓ·n_ℓ``, the parameter-weighted mean of the layers' relative
    errors. A reference for Gaussian weights (independent coordinates in each Gram's eigenbasis), not a bound on
    the real ones.
    """
    choose("decoder weighting", weighting, DECODER_WEIGHTINGS)
    values = [_check_spectrum(spectrum, "a layer spectrum") for spectrum in spectra]
    if weighting == "energy":
        weights = np.array([count * spectrum.sum() for count, spectrum in zip(rows, values, strict=True)])
    else:
        weights = np.array([count * spectrum.size for count, spectrum in zip(rows, values, strict=True)], float)
    return np.array([
        float(weights @ joint_rd_relative_errors(values, rows, bits, weights)) / float(weights.sum())
        for bits in bits_per_weight
    ])  # fmt: skip
