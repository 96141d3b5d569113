"""The features folder in the reference layout: ``DIR/<stem>_features.npz`` with key ``features``."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..fileio import atomic_write_bytes

FEATURES_SUFFIX = "_features.npz"


def features_path(directory: str | Path, video: str | Path) -> Path:
    return Path(directory) / f"{Path(video).stem}{FEATURES_SUFFIX}"


def write_features(directory: str | Path, video: str | Path, features: np.ndarray) -> Path:
    """Store a (frames, dim) float32 array atomically; returns the file written."""
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"features of {video} must be a non-empty (frames, dim) array, got {features.shape}")
    buffer = io.BytesIO()
    np.savez(buffer, features=features)
    target = features_path(directory, video)
    atomic_write_bytes(target, buffer.getvalue())
    return target
