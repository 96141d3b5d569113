"""The shape of a Number result in Label Studio, written and read here only: pure functions, no I/O.

A prediction (ours) and an annotation (the annotators' MOS) hold a Number control's value
the same way: ``{"from_name": <control>, "to_name": <video>, "type": "number",
"value": {"number": <float>}}`` in the ``result`` list.

Two numbers travel with each prediction and must not be confused (SPEC 7):
the control value (the difficulty, 1-5, shown in the Number control) and the
prediction-level ``score`` (0-1, Label Studio's "Prediction score" column and the
labeling priority: hardest to judge first when sorted descending).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ..answers import SCORE_MAX as DIFFICULTY_MAX
from ..answers import SCORE_MIN as DIFFICULTY_MIN
from .config import ProjectConfig

__all__ = ["DIFFICULTY_MAX", "DIFFICULTY_MIN", "build_prediction", "control_numbers", "labeling_priority"]


def labeling_priority(difficulty: float) -> float:
    """Priority in [0, 1]: the difficulty rescaled, (d - 1) / 4, clamped."""
    if not math.isfinite(difficulty):
        raise ValueError(f"difficulty must be finite, got {difficulty!r}")
    scaled = (difficulty - DIFFICULTY_MIN) / (DIFFICULTY_MAX - DIFFICULTY_MIN)
    return round(min(1.0, max(0.0, scaled)), 4)


def control_value(difficulty: float, config: ProjectConfig) -> float:
    """The number shown in the difficulty control: two decimals, inside the control's min/max."""
    low = config.difficulty.minimum if config.difficulty.minimum is not None else DIFFICULTY_MIN
    high = config.difficulty.maximum if config.difficulty.maximum is not None else DIFFICULTY_MAX
    return round(min(high, max(low, difficulty)), 2)


def build_prediction(difficulty: float, config: ProjectConfig, model_version: str, *,
                     score: float | None = None) -> dict[str, Any]:
    """One prediction for one task, in the list form Label Studio expects for a Number control.

    ``score``: the prediction-level score; the backend passes the task's queue priority
    (``prioritize.order``), which is not a confidence. Default: the difficulty rescaled.
    """
    return {
        "result": [
            {
                "from_name": config.difficulty.name,
                "to_name": config.video_name,
                "type": "number",
                "value": {"number": control_value(difficulty, config)},
            }
        ],
        "score": labeling_priority(difficulty) if score is None else score,
        "model_version": model_version,
    }


def control_numbers(results: Iterable[Any], control_name: str) -> list[Any]:
    """The raw ``value.number`` of every result of the Number control ``control_name``, in order.

    Values are returned as stored (maybe not numbers at all: callers say why they reject one);
    results of other controls or of another type are skipped.
    """
    found = []
    for result in results:
        if not isinstance(result, dict) or result.get("from_name") != control_name:
            continue
        if result.get("type") not in (None, "number"):
            continue
        value = result.get("value")
        found.append(value.get("number") if isinstance(value, dict) else None)
    return found
