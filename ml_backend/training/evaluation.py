"""Evaluation exactly as the MDS-VQA reference reports it (SPEC 6), with answers for the degenerate cases.

The reference fits a 4-parameter logistic from predictions to MOS with scipy's
``curve_fit`` (initial guess ``[max(mos), min(mos), mean(pred), std(pred) / 4]``, at most
10,000 evaluations); if the fitted values hold a NaN or are all equal it uses the raw
predictions; then SRCC **and** PLCC are both computed on those values. A predictor that
runs against the MOS therefore gets a positive SRCC when the fit flips it. Matches the
reference's own functions to 1e-6 on the parity harness's cases
(``tests/data/reference_evaluation.json``).

Where the reference crashes or returns NaN (fewer than four pairs: curve_fit raises a
TypeError; constant predictions or MOS; a fit that never converges) the metrics are
``None`` with a reason, so no caller ever sees a traceback. One function serves
``mdsvqa evaluate``, training's held-out evaluation, ``versions``, the report and promotion.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from scipy.optimize import curve_fit

MIN_PAIRS = 4  # the logistic has four parameters: curve_fit needs at least as many points
MAX_EVALUATIONS = 10_000

Fit = Literal["logistic", "raw"]


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """The reference's 4-parameter logistic: b2 at one end, b1 at the other, midpoint b3, scale b4."""
    return (b1 - b2) / (1 + np.exp(-(x - b3) / b4)) + b2


def fit_curve(predictions: ArrayLike, mos: ArrayLike) -> tuple[np.ndarray, Fit]:
    """Predictions mapped onto the MOS scale, and whether the logistic or the raw values are used.

    Raw values where the reference uses them (NaN or constant fitted values) and where it
    would crash (the fit does not converge within MAX_EVALUATIONS).
    """
    x = np.asarray(predictions, dtype=np.float64)
    y = np.asarray(mos, dtype=np.float64)
    guess = [np.max(y), np.min(y), np.mean(x), np.std(x) / 4.0]
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # overflow in exp and "covariance not estimated" change nothing
        try:
            params, _ = curve_fit(logistic4, x, y, p0=guess, maxfev=MAX_EVALUATIONS)
        except (RuntimeError, ValueError, TypeError):
            return x, "raw"
        fitted = logistic4(x, *params)
    if np.isnan(fitted).any() or np.all(fitted == fitted[0]):
        return x, "raw"
    return fitted, "logistic"


@dataclass(frozen=True)
class Evaluation:
    """SRCC and PLCC of one model on one labeled set; ``None`` metrics come with a reason."""

    srcc: float | None
    plcc: float | None
    count: int
    fit: Fit | None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.srcc is not None and self.plcc is not None

    def to_json(self) -> dict:
        return asdict(self)


def _undefined(count: int, reason: str, fit: Fit | None = None) -> Evaluation:
    return Evaluation(None, None, count, fit, reason)


def evaluate(predictions: ArrayLike, mos: ArrayLike) -> Evaluation:
    """The reference's SRCC and PLCC of ``predictions`` against ``mos`` (equal-length, finite)."""
    x = np.asarray(predictions, dtype=np.float64)
    y = np.asarray(mos, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"predictions {x.shape} and MOS {y.shape} must be equal-length vectors")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("predictions and MOS must be finite numbers")
    count = int(x.size)
    if count < MIN_PAIRS:
        return _undefined(count, f"{count} labeled prediction(s); SRCC and PLCC after the logistic fit need "
                          f"at least {MIN_PAIRS}")
    if np.all(x == x[0]):
        return _undefined(count, "all predictions are equal: no correlation is defined")
    if np.all(y == y[0]):
        return _undefined(count, "all MOS values are equal: no correlation is defined")
    fitted, fit = fit_curve(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        srcc = float(stats.spearmanr(fitted, y)[0])
        plcc = float(stats.pearsonr(fitted, y)[0])
    if not (math.isfinite(srcc) and math.isfinite(plcc)):
        return _undefined(count, "the correlations are undefined for these values", fit)
    return Evaluation(srcc, plcc, count, fit)


def evaluate_by_name(predictions: dict[str, float], mos: dict[str, float],
                     names: Iterable[str] | None = None) -> Evaluation:
    """:func:`evaluate` over the videos present in both (and in ``names`` when given), matched by name."""
    wanted = set(names) if names is not None else None
    matched = [n for n in predictions if n in mos and (wanted is None or n in wanted)]
    result = evaluate([predictions[n] for n in matched], [mos[n] for n in matched])
    if not matched:
        return _undefined(0, "no scored video has a label (matching is by file name)")
    return result
