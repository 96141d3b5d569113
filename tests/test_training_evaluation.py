"""Evaluation as the reference computes it, checked against its own functions (harness goldens)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from ml_backend.cli import main
from ml_backend.training import evaluation as E
from tests.media import REPO

REFERENCE = json.loads((REPO / "tests" / "data" / "reference_evaluation.json").read_text())
CASES = sorted(REFERENCE["cases"])


def test_goldens_come_from_the_reference_function():
    assert REFERENCE["reference_utils"]["sha256"]
    assert {"monotone", "decreasing", "ties", "scale100", "weak"} <= set(CASES)


@pytest.mark.parametrize("name", CASES)
def test_matches_the_reference_functions(name):
    case = REFERENCE["cases"][name]
    result = E.evaluate(case["pred"], case["mos"])
    if case["srcc"] is None:
        assert result.srcc is None and result.plcc is None and result.reason
        return
    assert result.srcc == pytest.approx(case["srcc"], abs=1e-6)
    assert result.plcc == pytest.approx(case["plcc"], abs=1e-6)
    assert result.count == case["n"]
    assert (result.fit == "raw") == bool(case["fell_back"])
    fitted, _ = E.fit_curve(case["pred"], case["mos"])
    # curve_fit is iterative: another BLAS build or CPU ends it ~1e-6 relative away (seen in a clean clone)
    np.testing.assert_allclose(fitted, case["fitted"], rtol=1e-5, atol=1e-6)


def test_a_decreasing_predictor_gets_a_positive_srcc_through_the_fit():
    case = REFERENCE["cases"]["decreasing"]
    assert stats.spearmanr(case["pred"], case["mos"])[0] < 0
    assert E.evaluate(case["pred"], case["mos"]).srcc > 0


def test_both_correlations_are_computed_on_the_fitted_values():
    case = REFERENCE["cases"]["nonlinear"]
    result = E.evaluate(case["pred"], case["mos"])
    fitted, fit = E.fit_curve(case["pred"], case["mos"])
    assert fit == "logistic"
    assert result.plcc == pytest.approx(stats.pearsonr(fitted, case["mos"])[0])
    assert result.plcc != pytest.approx(stats.pearsonr(case["pred"], case["mos"])[0], abs=1e-3)


@pytest.mark.parametrize("pred, mos, reason", [
    ([1.0, 2.0, 3.0], [1.0, 2.0, 4.0], "at least 4"),  # the reference: TypeError from curve_fit
    ([], [], "at least 4"),
    ([3.0] * 6, [1, 2, 3, 4, 5, 6], "predictions are equal"),
    ([1, 2, 3, 4, 5], [2.0] * 5, "MOS values are equal"),
])
def test_degenerate_inputs_give_null_metrics_with_a_reason(pred, mos, reason):
    result = E.evaluate(pred, mos)
    assert result.srcc is None and result.plcc is None and not result.ok
    assert reason in result.reason
    assert result.to_json()["srcc"] is None


def test_a_fit_that_does_not_converge_falls_back_to_the_raw_predictions(monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("Optimal parameters not found: Number of calls to function has reached maxfev")

    monkeypatch.setattr(E, "curve_fit", fail)
    x, y = [1.0, 2.0, 3.5, 4.0, 5.0], [10.0, 25.0, 20.0, 40.0, 55.0]
    result = E.evaluate(x, y)
    assert result.fit == "raw"
    assert result.plcc == pytest.approx(stats.pearsonr(x, y)[0])
    assert result.srcc == pytest.approx(stats.spearmanr(x, y)[0])


def test_the_fit_uses_the_reference_guess_and_limit(monkeypatch):
    seen = {}
    real = E.curve_fit

    def spy(f, x, y, p0, maxfev):
        seen.update(p0=list(p0), maxfev=maxfev)
        return real(f, x, y, p0=p0, maxfev=maxfev)

    monkeypatch.setattr(E, "curve_fit", spy)
    x, y = np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.array([10.0, 30.0, 20.0, 60.0, 50.0])
    E.evaluate(x, y)
    assert seen["p0"] == pytest.approx([60.0, 10.0, 3.0, np.std(x) / 4])
    assert seen["maxfev"] == 10_000


@pytest.mark.parametrize("pred,mos", [([1, 2, 3], [1, 2]), ([1, 2, float("nan"), 4], [1, 2, 3, 4])])
def test_malformed_inputs_are_refused(pred, mos):
    with pytest.raises(ValueError):
        E.evaluate(pred, mos)


def _files(tmp_path, case, *, extra_score=None, label_names=None):
    names = [f"v{i:03d}.mp4" for i in range(len(case["pred"]))]
    scores = {name: {"reasoning": "N/A", "score": pred} for name, pred in zip(names, case["pred"])}
    if extra_score:
        scores.update(extra_score)
    (tmp_path / "scores.json").write_text(json.dumps(scores))
    labels = [json.dumps({"video": f"/data/clips/{name}", "mos": mos})
              for name, mos in zip(label_names or names, case["mos"])]
    (tmp_path / "labels.jsonl").write_text("\n".join(labels) + "\n")
    return ["--scores", str(tmp_path / "scores.json"), "--labels", str(tmp_path / "labels.jsonl")]


def test_evaluate_command_matches_by_file_name_and_prints_json(tmp_path, capsys):
    case = REFERENCE["cases"]["monotone"]
    args = _files(tmp_path, case, extra_score={"unlabeled.mp4": {"score": 3.0}, "failed.mp4": {"score": None}})
    assert main(["evaluate", *args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["srcc"] == pytest.approx(case["srcc"], abs=1e-6)
    assert report["plcc"] == pytest.approx(case["plcc"], abs=1e-6)
    assert report["n"] == len(case["pred"])
    assert report["scores_without_label"] == ["unlabeled.mp4"] and "failed.mp4" in report["unusable_scores"]


def test_evaluate_command_without_overlap_says_why(tmp_path, capsys):
    case = REFERENCE["cases"]["monotone"]
    args = _files(tmp_path, case, label_names=[f"other{i}.mp4" for i in range(len(case["pred"]))])
    assert main(["evaluate", *args, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["srcc"] is None and "no scored video has a label" in report["reason"]


def test_evaluate_command_with_three_pairs_is_null_not_a_traceback(tmp_path, capsys):
    case = {"pred": [1.0, 2.0, 3.0], "mos": [2.0, 1.0, 3.0]}
    assert main(["evaluate", *_files(tmp_path, case)]) == 1
    assert "at least 4" in capsys.readouterr().out
