"""Symmetric Chamfer distance between two frame sets, straight from the definition.

    D(A, B) = ( mean_{x in A} min_{y in B} ||x - y||  +  mean_{y in B} min_{x in A} ||x - y|| ) / 2

Euclidean (not squared) distances, computed from explicit differences in float64: no
expansion |x|^2 + |y|^2 - 2 x.y, hence no cancellation. This is the ground truth the
fast batched kernel is tested against; it is O(|A| |B| d) memory and meant for small sets.
"""

from __future__ import annotations

import numpy as np

from .errors import FrameError


def _as_frames(frames, name: str) -> np.ndarray:
    array = np.asarray(frames, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise FrameError(f"{name}: expected a non-empty (frames, dim) array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise FrameError(f"{name}: holds NaN or infinite values")
    return array


def pairwise_euclidean(a, b) -> np.ndarray:
    """All frame-to-frame Euclidean distances, shape (|A|, |B|), float64."""
    a = _as_frames(a, "a")
    b = _as_frames(b, "b")
    if a.shape[1] != b.shape[1]:
        raise FrameError(f"frame dimensions differ: {a.shape[1]} and {b.shape[1]}")
    diff = a[:, None, :] - b[None, :, :]
    return np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))


def chamfer_distance(a, b) -> float:
    """Symmetric Chamfer distance between frame sets ``a`` (n, d) and ``b`` (m, d)."""
    distances = pairwise_euclidean(a, b)
    return float((distances.min(axis=1).mean() + distances.min(axis=0).mean()) / 2.0)
