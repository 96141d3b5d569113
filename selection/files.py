"""Reading the selection's input files: the reference scores JSON and JSON name lists.

Scores file: ``{"<video name>": {"reasoning": "N/A", "score": <float or null>, ...}}``.
A null or non-numeric score means scoring failed for that video: it is returned as a
reason, for the caller to report, never dropped quietly. Anything else that is not this
shape, or a name given twice, is an ``InputFileError`` / ``DuplicateNameError``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DuplicateNameError, InputFileError


@dataclass
class ScoresFile:
    scores: dict[str, float] = field(default_factory=dict)  # usable scores, file order
    unusable: dict[str, str] = field(default_factory=dict)  # name -> why its score cannot be used


def _load_json(path: str | Path, what: str):
    path = Path(path)

    def refuse_duplicates(pairs):
        counts = Counter(key for key, _value in pairs)
        repeated = sorted(key for key, count in counts.items() if count > 1)
        if repeated:
            raise DuplicateNameError(f"{path}: names listed more than once: {', '.join(repeated[:5])}")
        return dict(pairs)

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputFileError(f"{path}: no such {what} file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"{path}: cannot read the {what} file ({exc})") from None
    try:
        return json.loads(text, object_pairs_hook=refuse_duplicates)
    except json.JSONDecodeError as exc:
        raise InputFileError(f"{path}: not valid JSON ({exc})") from None


def read_scores(path: str | Path) -> ScoresFile:
    data = _load_json(path, "scores")
    if not isinstance(data, dict) or not all(isinstance(entry, dict) for entry in data.values()):
        raise InputFileError(f'{path}: expected {{"<video name>": {{"score": <number or null>, ...}}, ...}}')
    result = ScoresFile()
    for name, entry in data.items():
        if "score" not in entry:
            result.unusable[name] = "entry has no 'score'"
            continue
        score = entry["score"]
        if score is None:
            reason = f"score is null (scoring failed: {entry['error']})" if entry.get("error") else "score is null"
            result.unusable[name] = reason
        elif isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            result.unusable[name] = f"score is not a finite number: {score!r}"
        else:
            result.scores[name] = float(score)
    return result


def read_name_list(path: str | Path, what: str = "name list") -> list[str]:
    """A JSON list of video names (the format ``mdsvqa select`` writes), no name twice."""
    data = _load_json(path, what)
    if not isinstance(data, list) or not all(isinstance(name, str) for name in data):
        raise InputFileError(f'{path}: expected a JSON list of video names, e.g. ["a.mp4", "b.mp4"]')
    repeated = sorted(name for name, count in Counter(data).items() if count > 1)
    if repeated:
        raise DuplicateNameError(f"{path}: names listed more than once: {', '.join(repeated[:5])}")
    return data
