"""Weight distributions for the analytic comparison of Kuzmin et al. (2023, Sec. 3), with exact partial moments.

Every parametric distribution here has zero mean and unit variance (σ = 1), so a clipping range or a
truncation point in "σ units" is the same number in absolute units; an :class:`Empirical` distribution
keeps the scale of its tensor and reports its own σ. Kurtosis is Pearson's (the Gaussian has 3).

What integration needs is the partial moments ``M_k(a, b) = ∫_a^b w^k f(w) dw`` for k = 0, 1, 2: the
squared error of any rounding rule that maps the cell (a, b] to the level q is
``M_2 - 2 q M_1 + q² M_0``. They are closed forms here:

* Gaussian: ``G_0 = Φ(x)``, ``G_1 = -φ(x)``, ``G_2 = Φ(x) - x φ(x)`` with ``G_k(x) = M_k(-∞, x)``.
* Laplace with scale b = 1/√2: ``G_0 = e^{x/b}/2``, ``G_1 = e^{x/b}(x - b)/2``,
  ``G_2 = e^{x/b}(x² - 2bx + 2b²)/2`` for x ≤ 0.
* Student-t with ν degrees of freedom, rescaled by s = √((ν-2)/ν) to unit variance (u = x/s):
  ``G_0 = F_ν(u)``, ``G_1 = -s ν/(ν-1) (1 + u²/ν) f_ν(u)``,
  ``G_2 = s² [ν(ν-1)/(ν-2) F_{ν-2}(u √((ν-2)/ν)) - ν F_ν(u)]``
  (from ``t² = ν(1 + t²/ν) - ν`` and the t_{ν-2} kernel; the constant follows from ``E[T²] = ν/(ν-2)``).
  Its kurtosis is ``3 + 6/(ν-4)``, so ``ν = 4 + 6/(K-3)`` (Kuzmin et al. parameterize by kurtosis).
* Truncation to [-T, T] (the paper's bounded heavy tails): the parent's moments restricted and
  renormalized by ``Z = 1 - 2 F(-T)``.

Symmetric distributions evaluate every moment on the lower half-line and mirror it, so upper-tail
masses never suffer the cancellation of ``1 - F(x)``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from functools import cached_property
from typing import Any

import numpy as np
from scipy import integrate, special

from theory.errors import PvqError, choose

Moments = tuple[np.ndarray, np.ndarray, np.ndarray]

# Edges at ±∞ are replaced by ±FAR so that products like x·φ(x) evaluate to 0 instead of ∞·0.
FAR = 1e150


class Distribution(ABC):
    """A real weight distribution: partial moments for integration, quantiles for pruning, samples for tests."""

    name: str

    @abstractmethod
    def partial_moments(self, lower: np.ndarray, upper: np.ndarray) -> Moments:
        """``(M_0, M_1, M_2)`` with ``M_k = ∫ w^k f(w) dw`` over each cell (lower, upper]."""

    @abstractmethod
    def cdf(self, x: np.ndarray | float) -> np.ndarray:
        """``F(x) = P(W <= x)``."""

    @abstractmethod
    def quantile(self, q: np.ndarray | float) -> np.ndarray:
        """``F⁻¹(q)``."""

    @abstractmethod
    def abs_quantile(self, q: float) -> float:
        """The q-quantile of |W|; for a symmetric distribution ``F⁻¹(½ + q/2)``."""

    @abstractmethod
    def small_magnitude_energy(self, sparsity: float) -> float:
        """``E[W² 1{|W| < t}]`` with t the sparsity-quantile of |W|: the squared error of magnitude pruning."""

    @abstractmethod
    def second_moment(self) -> float:
        """``E[W²]``: the signal power in the SQNR."""

    @abstractmethod
    def std(self) -> float:
        """Standard deviation σ (the unit of clipping ranges)."""

    @abstractmethod
    def kurtosis(self) -> float:
        """Pearson kurtosis ``E[(W-μ)⁴] / σ⁴`` (3 for the Gaussian)."""

    @abstractmethod
    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` i.i.d. draws (Monte Carlo checks and block formats)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Name and parameters, for result tables."""

    def ppf(self, q: np.ndarray | float) -> np.ndarray:
        """Alias of :meth:`quantile` (scipy's name)."""
        return self.quantile(q)

    def abs_mean(self) -> float:
        """``E|W|`` (the BitNet b1.58 absmean scale)."""
        _, m1, _ = self.partial_moments(np.array([-np.inf, 0.0]), np.array([0.0, np.inf]))
        return float(m1[1] - m1[0])


class SymmetricDistribution(Distribution):
    """A distribution symmetric about 0, described by its lower partial moments ``G_k(x)`` for x <= 0."""

    @abstractmethod
    def lower_moments(self, x: np.ndarray) -> Moments:
        """``G_k(x) = ∫_{-∞}^x w^k f(w) dw`` for k = 0, 1, 2 and x <= 0 (finite)."""

    @abstractmethod
    def lower_quantile(self, q: np.ndarray) -> np.ndarray:
        """``F⁻¹(q)`` for q <= ½."""

    @abstractmethod
    def pdf(self, x: np.ndarray | float) -> np.ndarray:
        """Density f(x)."""

    def partial_moments(self, lower: np.ndarray, upper: np.ndarray) -> Moments:
        """``M_k(a, b) = [G_k(min(b,0)) - G_k(min(a,0))] + (-1)^k [G_k(-max(a,0)) - G_k(-max(b,0))]``."""
        a = np.clip(np.asarray(lower, dtype=float), -FAR, FAR)
        b = np.clip(np.asarray(upper, dtype=float), -FAR, FAR)
        low_b, low_a = self.lower_moments(np.minimum(b, 0.0)), self.lower_moments(np.minimum(a, 0.0))
        up_a, up_b = self.lower_moments(-np.maximum(a, 0.0)), self.lower_moments(-np.maximum(b, 0.0))
        return tuple(  # type: ignore[return-value]
            (low_b[k] - low_a[k]) + (-1) ** k * (up_a[k] - up_b[k]) for k in range(3)
        )

    def cdf(self, x: np.ndarray | float) -> np.ndarray:
        x = np.clip(np.asarray(x, dtype=float), -FAR, FAR)
        below = self.lower_moments(-np.abs(x))[0]
        return np.where(x <= 0, below, 1.0 - below)

    def quantile(self, q: np.ndarray | float) -> np.ndarray:
        q = np.asarray(q, dtype=float)
        if np.any((q < 0) | (q > 1)):
            raise PvqError(f"quantile levels must lie in [0, 1], got {q}")
        lower = np.minimum(q, 1.0 - q)
        magnitude = self.lower_quantile(lower)
        return np.where(q <= 0.5, magnitude, -magnitude)

    def abs_quantile(self, q: float) -> float:
        return float(-self.lower_quantile(np.asarray((1.0 - q) / 2.0)))

    def small_magnitude_energy(self, sparsity: float) -> float:
        t = self.abs_quantile(sparsity)
        return float(2.0 * (self.lower_moments(np.array(0.0))[2] - self.lower_moments(np.array(-t))[2]))

    def second_moment(self) -> float:
        return float(2.0 * self.lower_moments(np.array(0.0))[2])

    def std(self) -> float:
        return math.sqrt(self.second_moment())


class Gaussian(SymmetricDistribution):
    """Standard normal N(0, 1)."""

    name = "gaussian"

    def lower_moments(self, x: np.ndarray) -> Moments:
        phi = self.pdf(x)
        cdf = special.ndtr(x)
        return cdf, -phi, cdf - x * phi

    def lower_quantile(self, q: np.ndarray) -> np.ndarray:
        return special.ndtri(q)

    def pdf(self, x: np.ndarray | float) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        return np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)

    def kurtosis(self) -> float:
        return 3.0

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.standard_normal(n)

    def describe(self) -> dict[str, Any]:
        return {"distribution": self.name, "kurtosis": 3.0, "truncate": None}


class Laplace(SymmetricDistribution):
    """Laplace with unit variance: density ``exp(-|x|/b) / (2b)``, b = 1/√2; kurtosis 6."""

    name = "laplace"
    scale = 1.0 / math.sqrt(2.0)

    def lower_moments(self, x: np.ndarray) -> Moments:
        b = self.scale
        half_mass = 0.5 * np.exp(x / b)
        return half_mass, half_mass * (x - b), half_mass * (x * x - 2.0 * b * x + 2.0 * b * b)

    def lower_quantile(self, q: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return self.scale * np.log(2.0 * np.asarray(q, dtype=float))

    def pdf(self, x: np.ndarray | float) -> np.ndarray:
        return np.exp(-np.abs(np.asarray(x, dtype=float)) / self.scale) / (2.0 * self.scale)

    def kurtosis(self) -> float:
        return 6.0

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.laplace(0.0, self.scale, n)

    def describe(self) -> dict[str, Any]:
        return {"distribution": self.name, "kurtosis": 6.0, "truncate": None}


class StudentT(SymmetricDistribution):
    """Student-t with ν > 2 degrees of freedom, rescaled by √((ν-2)/ν) to unit variance."""

    name = "student-t"

    def __init__(self, df: float) -> None:
        if not (isinstance(df, int | float) and math.isfinite(df) and df > 2):
            raise PvqError(f"Student-t needs degrees of freedom > 2 for a finite variance, got {df!r}")
        self.df = float(df)
        self.scale = math.sqrt((self.df - 2.0) / self.df)
        self._log_norm = (
            special.gammaln((self.df + 1) / 2) - special.gammaln(self.df / 2) - 0.5 * math.log(self.df * math.pi)
        )

    @classmethod
    def from_kurtosis(cls, kurtosis: float) -> StudentT:
        """The unit-variance Student-t with Pearson kurtosis K: ``ν = 4 + 6/(K - 3)``, K > 3."""
        if not (isinstance(kurtosis, int | float) and math.isfinite(kurtosis) and kurtosis > 3):
            raise PvqError(
                f"Student-t kurtosis must be a finite number > 3 (3 is the Gaussian limit), got {kurtosis!r}"
            )
        return cls(4.0 + 6.0 / (kurtosis - 3.0))

    def _kernel(self, u: np.ndarray, power: float) -> np.ndarray:
        """``(1 + u²/ν)^(-power)``."""
        return np.exp(-power * np.log1p(u * u / self.df))

    def lower_moments(self, x: np.ndarray) -> Moments:
        nu, s = self.df, self.scale
        u = np.asarray(x, dtype=float) / s
        cdf = special.stdtr(nu, u)
        g1 = -s * nu / (nu - 1.0) * math.exp(self._log_norm) * self._kernel(u, (nu - 1.0) / 2.0)
        narrower = special.stdtr(nu - 2.0, u * math.sqrt((nu - 2.0) / nu))
        g2 = s * s * (nu * (nu - 1.0) / (nu - 2.0) * narrower - nu * cdf)
        return cdf, g1, g2

    def lower_quantile(self, q: np.ndarray) -> np.ndarray:
        return self.scale * special.stdtrit(self.df, np.asarray(q, dtype=float))

    def pdf(self, x: np.ndarray | float) -> np.ndarray:
        u = np.asarray(x, dtype=float) / self.scale
        return math.exp(self._log_norm) * self._kernel(u, (self.df + 1.0) / 2.0) / self.scale

    def kurtosis(self) -> float:
        return 3.0 + 6.0 / (self.df - 4.0) if self.df > 4 else math.inf

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.scale * rng.standard_t(self.df, n)

    def describe(self) -> dict[str, Any]:
        return {"distribution": self.name, "kurtosis": self.kurtosis(), "truncate": None, "df": self.df}


class Truncated(SymmetricDistribution):
    """A symmetric parent restricted to [-T, T] and renormalized (T in the parent's σ units)."""

    def __init__(self, parent: SymmetricDistribution, bound: float) -> None:
        if not (isinstance(bound, int | float) and math.isfinite(bound) and bound > 0):
            raise PvqError(f"truncation point must be a positive number of σ, got {bound!r}")
        self.parent = parent
        self.bound = float(bound)
        self.name = f"truncated-{parent.name}"
        self._below = self.parent.lower_moments(np.array(-self.bound))
        self._mass = float(1.0 - 2.0 * self._below[0])

    def lower_moments(self, x: np.ndarray) -> Moments:
        inside = self.parent.lower_moments(np.maximum(np.asarray(x, dtype=float), -self.bound))
        return tuple((inside[k] - self._below[k]) / self._mass for k in range(3))  # type: ignore[return-value]

    def lower_quantile(self, q: np.ndarray) -> np.ndarray:
        return self.parent.lower_quantile(self._below[0] + np.asarray(q, dtype=float) * self._mass)

    def pdf(self, x: np.ndarray | float) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        return np.where(np.abs(x) <= self.bound, self.parent.pdf(x) / self._mass, 0.0)

    @cached_property
    def _fourth_moment(self) -> float:
        value, _ = integrate.quad(lambda w: w**4 * float(self.pdf(w)), 0.0, self.bound, epsabs=0, epsrel=1e-12)
        return 2.0 * value

    def kurtosis(self) -> float:
        return self._fourth_moment / self.second_moment() ** 2

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        draws: list[np.ndarray] = []
        kept = 0
        while kept < n:
            batch = self.parent.sample(int((n - kept) / self._mass) + 64, rng)
            batch = batch[np.abs(batch) <= self.bound]
            draws.append(batch)
            kept += batch.size
        return np.concatenate(draws)[:n]

    def describe(self) -> dict[str, Any]:
        parent = self.parent.describe()
        return {**parent, "distribution": self.name, "kurtosis": self.kurtosis(), "truncate": self.bound,
                "parent_kurtosis": parent["kurtosis"]}


class TruncatedStudentT(Truncated):
    """Student-t of (untruncated) kurtosis K cut to [-T, T] σ: bounded heavy tails (Kuzmin et al., Sec. 3)."""

    def __init__(self, kurtosis: float, truncate: float) -> None:
        super().__init__(StudentT.from_kurtosis(kurtosis), truncate)


class Empirical(Distribution):
    """The empirical distribution of a tensor's entries: the same SQNR functions then serve real weights.

    Partial moments are exact sums over the sorted values (cell (a, b] holds the values with a < v <= b,
    matching :func:`theory.formats.round_to_values`), via cumulative sums of v and v².
    """

    name = "empirical"

    def __init__(self, values: np.ndarray) -> None:
        flat = np.asarray(values, dtype=np.float64).ravel()
        if flat.size == 0 or not np.all(np.isfinite(flat)):
            raise PvqError("an empirical distribution needs a non-empty tensor of finite values")
        self.values = np.sort(flat)
        self.size = flat.size
        zero = np.zeros(1)
        self._cum = [np.concatenate([zero, np.cumsum(self.values**k)]) for k in (1, 2)]
        self._energy_by_magnitude = np.concatenate([zero, np.cumsum(np.sort(self.values**2))])

    def _below(self, x: np.ndarray) -> Moments:
        count = np.searchsorted(self.values, x, side="right")
        return count / self.size, self._cum[0][count] / self.size, self._cum[1][count] / self.size

    def partial_moments(self, lower: np.ndarray, upper: np.ndarray) -> Moments:
        below_b, below_a = self._below(np.asarray(upper, dtype=float)), self._below(np.asarray(lower, dtype=float))
        return tuple(below_b[k] - below_a[k] for k in range(3))  # type: ignore[return-value]

    def cdf(self, x: np.ndarray | float) -> np.ndarray:
        return np.searchsorted(self.values, np.asarray(x, dtype=float), side="right") / self.size

    def quantile(self, q: np.ndarray | float) -> np.ndarray:
        return np.quantile(self.values, q, method="inverted_cdf")

    def abs_quantile(self, q: float) -> float:
        return float(np.quantile(np.abs(self.values), q, method="inverted_cdf"))

    def pruned_count(self, sparsity: float) -> int:
        """Magnitude pruning zeroes ``round(p·n)`` entries, the smallest in |w|."""
        return round(sparsity * self.size)

    def small_magnitude_energy(self, sparsity: float) -> float:
        return float(self._energy_by_magnitude[self.pruned_count(sparsity)] / self.size)

    def second_moment(self) -> float:
        return float(self._cum[1][-1] / self.size)

    def std(self) -> float:
        return float(np.std(self.values))

    def kurtosis(self) -> float:
        centered = self.values - self.values.mean()
        variance = float(np.mean(centered**2))
        if variance == 0:
            raise PvqError("kurtosis is undefined for a constant tensor")
        return float(np.mean(centered**4) / variance**2)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(self.values, n)

    def describe(self) -> dict[str, Any]:
        return {"distribution": self.name, "kurtosis": self.kurtosis(), "truncate": None, "numel": self.size}


DISTRIBUTION_NAMES = ("gaussian", "laplace", "student-t")


def make_distribution(name: str, kurtosis: float | None = None, truncate: float | None = None) -> Distribution:
    """The unit-variance distribution called ``name``, optionally truncated to [-truncate, truncate] σ.

    ``kurtosis`` parameterizes the Student-t (required there, > 3) and is refused for the Gaussian (3) and
    the Laplace (6), whose kurtosis is fixed.
    """
    key = name.lower()
    choose("distribution", key, DISTRIBUTION_NAMES)
    if key == "student-t":
        if kurtosis is None:
            raise PvqError("the Student-t needs its kurtosis (> 3), e.g. --kurtosis 6")
        if truncate is not None:
            return TruncatedStudentT(kurtosis, truncate)
        return StudentT.from_kurtosis(kurtosis)
    if kurtosis is not None:
        raise PvqError(f"the {key} distribution has a fixed kurtosis; --kurtosis applies to student-t only")
    base: SymmetricDistribution = Gaussian() if key == "gaussian" else Laplace()
    return base if truncate is None else Truncated(base, truncate)
