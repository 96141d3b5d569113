"""Prediction building: list-form Number result, separate 0-1 score, model version."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ml_backend.labelstudio.config import parse_label_config
from ml_backend.labelstudio.predictions import build_prediction, control_value, labeling_priority

CONFIG = parse_label_config((Path(__file__).resolve().parents[1] / "label_config.xml").read_text())


def test_prediction_shape():
    prediction = build_prediction(3.2, CONFIG, "v1")
    assert prediction == {
        "result": [{"from_name": "difficulty", "to_name": "video", "type": "number", "value": {"number": 3.2}}],
        "score": 0.55,
        "model_version": "v1",
    }


@pytest.mark.parametrize("difficulty, priority", [(1.0, 0.0), (5.0, 1.0), (3.0, 0.5), (0.2, 0.0), (7.5, 1.0)])
def test_priority_is_rescaled_difficulty_in_unit_interval(difficulty, priority):
    assert labeling_priority(difficulty) == pytest.approx(priority)


def test_priority_orders_like_difficulty():
    values = [1.0, 1.01, 2.5, 4.99, 5.0]
    assert [labeling_priority(v) for v in values] == sorted(labeling_priority(v) for v in values)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_priority_refuses_non_finite(bad):
    with pytest.raises(ValueError):
        labeling_priority(bad)


def test_control_value_respects_control_range_and_two_decimals():
    assert control_value(3.14159, CONFIG) == 3.14
    assert control_value(0.5, CONFIG) == 1.0
    assert control_value(9.0, CONFIG) == 5.0
    open_range = parse_label_config('<View><Video name="v" value="$v"/><Number name="difficulty" toName="v"/></View>')
    assert control_value(5.5, open_range) == 5.0  # the model's own scale when the control sets none
