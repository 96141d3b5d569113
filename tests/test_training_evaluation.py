"""Logistic fit, SRCC and PLCC on held-out predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from ml_backend.training import evaluation as E


def test_exact_logistic_relation_is_recovered():
    x = np.linspace(1, 5, 30)
    y = E.logistic4(x, 80.0, 10.0, 3.0, 0.5)
    mapping = E.fit_logistic(x, y)
    assert mapping.kind == "logistic"
    np.testing.assert_allclose(mapping.params[:3], [80.0, 10.0, 3.0], rtol=1e-3)
    result = E.evaluate(x, y)
    assert result.srcc == pytest.approx(1.0)
    assert result.plcc > 0.99999
    assert result.count == 30 and result.fit == "logistic"


def test_logistic_plcc_beats_raw_pearson_on_a_saturating_relation():
    rng = np.random.default_rng(0)
    x = rng.uniform(1, 5, 200)
    y = E.logistic4(x, 5.0, 1.0, 3.0, 0.3) + rng.normal(0, 0.1, x.size)
    result = E.evaluate(x, y)
    raw = stats.pearsonr(x, y).statistic
    assert result.plcc > raw + 0.02
    assert result.srcc == pytest.approx(stats.spearmanr(x, y).statistic)


def test_anticorrelated_predictions_give_negative_srcc_and_positive_plcc():
    x = np.linspace(1, 5, 20)
    y = 6.0 - x
    result = E.evaluate(x, y)
    assert result.srcc == pytest.approx(-1.0)
    assert result.plcc > 0.999  # the fit flips orientation, as the literature's PLCC does


def test_constant_predictions_are_undefined_not_an_exception():
    result = E.evaluate([3.0] * 6, [1, 2, 3, 4, 5, 6])
    assert math.isnan(result.srcc) and math.isnan(result.plcc) and result.fit == "none"
    assert result.to_json()["srcc"] is None and result.to_json()["count"] == 6


def test_fallback_to_linear_when_the_fit_fails(monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("Optimal parameters not found")

    monkeypatch.setattr(E, "curve_fit", fail)
    x = np.array([1.0, 2.0, 3.5, 4.0, 5.0])
    y = np.array([10.0, 25.0, 20.0, 40.0, 55.0])
    result = E.evaluate(x, y)
    assert result.fit == "linear"
    assert result.plcc == pytest.approx(stats.pearsonr(x, y).statistic)


def test_two_level_predictions_still_give_finite_numbers():
    result = E.evaluate([1, 1, 1, 5, 5, 5], [1.0, 1.5, 2.0, 4.0, 4.5, 3.9])
    assert math.isfinite(result.srcc) and math.isfinite(result.plcc)
    assert result.plcc > 0.9


@pytest.mark.parametrize("pred,mos", [([1, 2], [1, 2]), ([1, 2, 3], [1, 2]), ([1, 2, float("nan")], [1, 2, 3])])
def test_bad_inputs_are_refused(pred, mos):
    with pytest.raises(ValueError):
        E.evaluate(pred, mos)


def test_a_converged_fit_worse_than_a_line_falls_back_to_linear(monkeypatch):
    def flat_far_away(f, x, y, p0, maxfev):  # "converges" to a nearly flat curve far from the data
        return np.array([100.0, 99.0, 0.0, 1.0]), None

    monkeypatch.setattr(E, "curve_fit", flat_far_away)
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert E.fit_logistic(x, 2 * x + 1).kind == "linear"
