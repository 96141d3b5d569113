"""The reference scores file: ``{"<video name>": {"reasoning": "N/A", "score": <float>}}``.

Failed videos keep their place with ``"score": null`` and an ``"error"``; scores from the
tiny random model carry a ``"warning"``. Extra keys are ignored by readers of the reference.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import MdsVqaError
from ..fileio import atomic_write_json
from .scorer import ScoreResult

TINY_ITEM_WARNING = "scored by the tiny random test model: meaningless"


def result_entry(result: ScoreResult, *, tiny: bool = False) -> dict:
    entry: dict = {"reasoning": "N/A", "score": None if result.difficulty is None else round(result.difficulty, 4)}
    if result.error:
        entry["error"] = result.error
        if result.raw_text:
            entry["raw_text"] = result.raw_text
    if tiny:
        entry["warning"] = TINY_ITEM_WARNING
    return entry


def read_scores(path: str | Path) -> dict[str, dict]:
    """Load a scores file, with a clear error when it is not in the reference format."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MdsVqaError(f"{path}: no such scores file") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise MdsVqaError(f"{path}: not a readable JSON scores file ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise MdsVqaError(f'{path}: expected {{"<video name>": {{"score": ...}}, ...}}')
    return data


def valid_score(entry: dict) -> float | None:
    score = entry.get("score")
    if isinstance(score, (int, float)) and not isinstance(score, bool) and math.isfinite(score):
        return float(score)
    return None


def write_scores(path: str | Path, scores: dict[str, dict]) -> None:
    atomic_write_json(path, dict(sorted(scores.items())))
