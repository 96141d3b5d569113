"""What a report shows, gathered into one value (pure; no file or network access)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class PickRow:
    rank: int
    name: str
    objective: float
    difficulty: float
    mean_distance: float


@dataclass(frozen=True)
class VersionRow:
    id: str
    kind: str
    active: bool
    created: str
    before: dict | None
    after: dict | None
    labels: int | None = None  # labels the version was trained and evaluated with (train + held-out)


@dataclass
class ReportData:
    title: str
    difficulty: dict[str, float]  # every scored video
    failed: dict[str, str]  # video -> why it has no score
    embeddings: dict[str, np.ndarray]  # video -> (frames, dim)
    picks: list[PickRow] = field(default_factory=list)
    lam: float | None = None
    labeled: list[str] = field(default_factory=list)
    versions: list[VersionRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def budget_points(versions: list[VersionRow]) -> dict[str, list[tuple[int, float]]]:
    """Per kind: (labels spent, held-out SRCC after training), by labels, for the budget curve.

    Each kind's curve starts at its first version's SRCC before training (the stock or
    previous model) at 0 labels; versions without a label count or a defined SRCC are left out.
    """
    curves: dict[str, list[tuple[int, float]]] = {}
    for row in sorted(versions, key=lambda v: v.created):
        srcc = (row.after or {}).get("srcc")
        if row.labels is None or not isinstance(srcc, (int, float)) or srcc != srcc:
            continue
        points = curves.setdefault(row.kind, [])
        before = (row.before or {}).get("srcc")
        if not points and isinstance(before, (int, float)) and before == before:
            points.append((0, float(before)))
        points.append((int(row.labels), float(srcc)))
    return {kind: sorted(points) for kind, points in curves.items()}


def video_means(embeddings: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """One L2-normalised mean embedding per video, in a stable (sorted) order."""
    names = sorted(embeddings)
    if not names:
        return [], np.zeros((0, 2))
    means = np.stack([embeddings[n].astype(np.float64).mean(axis=0) for n in names])
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    return names, means / np.maximum(norms, 1e-12)


def project_2d(points: np.ndarray) -> np.ndarray:
    """Principal-component projection to two dimensions (deterministic sign)."""
    if len(points) == 0:
        return np.zeros((0, 2))
    centred = points - points.mean(axis=0)
    if len(points) == 1 or not np.any(centred):
        return np.zeros((len(points), 2))
    _u, _s, vt = np.linalg.svd(centred, full_matrices=False)
    axes = vt[:2]
    # Fix each axis' sign so the same data always draws the same way.
    axes = axes * np.where(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)] < 0, -1, 1)[:, None]
    coords = centred @ axes.T
    if coords.shape[1] == 1:
        coords = np.hstack([coords, np.zeros((len(coords), 1))])
    return coords
