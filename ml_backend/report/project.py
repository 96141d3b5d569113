"""A Label Studio project's report data from one ordering pass (``mdsvqa report --project``, GET /report)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlparse

import numpy as np

from .data import PickRow, ReportData


def task_name(summary: Any, task_id: int) -> str:
    """"task 12: clip.mp4": the task id and the file name of its video reference."""
    ref = summary.media.get(task_id, "")
    path = urlparse(ref).path or ref
    return f"task {task_id}: {PurePosixPath(path).name or '?'}"


def project_report_data(summary: Any, title: str, frames: Mapping[int, np.ndarray] | None = None) -> ReportData:
    """``summary``: a ``PrioritySummary``; ``frames``: task -> features (default: the summary's own)."""
    features = summary.frames if frames is None else frames

    def name(task_id: int) -> str:
        return task_name(summary, task_id)

    data = ReportData(title=title,
                      difficulty={name(t): d for t, d in summary.difficulty.items()},
                      failed={name(t): why for t, why in summary.without_difficulty.items()},
                      embeddings={name(t): f for t, f in features.items()},
                      labeled=[name(t) for t in summary.labeled], lam=summary.lam,
                      picks=[PickRow(rank, name(s.index), s.objective, s.difficulty, s.mean_distance)
                             for rank, s in enumerate(summary.steps, start=1)])
    data.notes.append(f"model version {summary.model_version}: {len(summary.labeled)} labeled, "
                      f"{summary.pool} unlabeled with a difficulty, budget {summary.budget}")
    if summary.model_version.startswith("TINY-RANDOM-"):
        data.notes.append("These difficulties come from the tiny random test model: they are meaningless.")
    return data
