"""Held-out evaluation as VQA papers report it: SRCC, and PLCC after a 4-parameter logistic fit.

Predictions and MOS live on different scales, so PLCC is computed after mapping the
predictions onto the MOS with the monotonic logistic
``y = (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2`` (the usual VQEG form). SRCC is rank
based and needs no mapping. The fit is unconstrained in orientation, as in the
literature: a model whose scores run against the MOS gets a negative SRCC but a
positive PLCC, so compare models on SRCC first.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from scipy.optimize import OptimizeWarning, curve_fit

FitKind = Literal["logistic", "linear", "none"]


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """The 4-parameter logistic: b2 at -inf, b1 at +inf, midpoint b3, slope scale |b4|."""
    z = np.clip(-(x - b3) / max(abs(b4), 1e-12), -500.0, 500.0)  # no overflow warnings in exp
    return (b1 - b2) / (1.0 + np.exp(z)) + b2


@dataclass(frozen=True)
class Mapping:
    """How predictions were mapped onto the MOS scale before PLCC."""

    kind: FitKind
    params: tuple[float, ...]

    def __call__(self, x: ArrayLike) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.kind == "logistic":
            return logistic4(x, *self.params)
        if self.kind == "linear":
            return self.params[0] * x + self.params[1]
        return x


def fit_logistic(predictions: ArrayLike, mos: ArrayLike) -> Mapping:
    """Least-squares 4-parameter logistic from predictions to MOS, with a documented fallback.

    Initial guess: asymptotes at the MOS extremes (swapped when predictions and MOS are
    rank-anticorrelated), midpoint at the mean prediction, slope scale at the predictions'
    standard deviation. When scipy does not converge, returns non-finite parameters or a
    flat curve, or lands in a local minimum that fits worse than a line, a straight-line
    fit is used instead (PLCC after a linear map equals the
    raw Pearson correlation); with constant predictions there is nothing to fit ("none").
    """
    x = np.asarray(predictions, dtype=np.float64)
    y = np.asarray(mos, dtype=np.float64)
    spread = float(np.std(x))
    if spread == 0.0:
        return Mapping("none", ())
    rho = stats.spearmanr(x, y).statistic
    high, low = float(np.max(y)), float(np.min(y))
    if np.isfinite(rho) and rho < 0:
        high, low = low, high
    guess = (high, low, float(np.mean(x)), spread)
    slope, intercept = np.polyfit(x, y, 1)
    linear = Mapping("linear", (float(slope), float(intercept)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)  # "covariance not estimated": params may be fine
            params, _ = curve_fit(logistic4, x, y, p0=guess, maxfev=20_000)
    except (RuntimeError, ValueError):
        return linear
    logistic = Mapping("logistic", tuple(float(p) for p in params))
    fitted = logistic(x)
    if not (np.all(np.isfinite(params)) and np.std(fitted) > 1e-12):
        return linear
    # A converged but poor local minimum: the logistic family contains near-linear curves,
    # so it should never fit worse than a line.
    if np.sum((fitted - y) ** 2) > np.sum((linear(x) - y) ** 2) * (1 + 1e-6) + 1e-12:
        return linear
    return logistic


@dataclass(frozen=True)
class Evaluation:
    """Correlations of one model on one held-out set; NaN where undefined (e.g. constant predictions)."""

    srcc: float
    plcc: float
    count: int
    fit: FitKind

    def to_json(self) -> dict:
        """JSON-safe dict: NaN becomes None."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def evaluate(predictions: ArrayLike, mos: ArrayLike) -> Evaluation:
    """SRCC of raw predictions and PLCC of logistic-mapped predictions against MOS."""
    x = np.asarray(predictions, dtype=np.float64)
    y = np.asarray(mos, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"predictions {x.shape} and MOS {y.shape} must be equal-length vectors")
    if x.size < 3:
        raise ValueError(f"correlations need at least 3 videos, got {x.size}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("predictions and MOS must be finite")
    mapping = fit_logistic(x, y)
    fitted = mapping(x)
    with warnings.catch_warnings():  # constant input: scipy warns and returns NaN, which is our answer
        warnings.simplefilter("ignore")
        srcc = float(stats.spearmanr(x, y).statistic)
        plcc = float(stats.pearsonr(fitted, y).statistic) if np.std(fitted) > 0 and np.std(y) > 0 else math.nan
    return Evaluation(srcc=srcc, plcc=plcc, count=int(x.size), fit=mapping.kind)
