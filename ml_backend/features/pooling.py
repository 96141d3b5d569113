"""Vision-tower tokens to one embedding per temporal patch (pure array code)."""

from __future__ import annotations

import numpy as np


def pool_temporal_patches(tokens: np.ndarray, grids: np.ndarray, merge_size: int = 2) -> list[np.ndarray]:
    """Split merged vision tokens per video, average each temporal patch, L2-normalise.

    ``tokens`` is the vision tower output for a batch, (sum of t*h*w/merge^2, dim), in the
    tower's (t, h, w) order; ``grids`` holds each video's (t, h, w) patch grid. Returns one
    (t, dim) float32 array per video: an embedding for every two sampled frames.
    """
    grids = np.asarray(grids).reshape(-1, 3)
    counts = [int(t * h * w) // (merge_size * merge_size) for t, h, w in grids]
    if sum(counts) != tokens.shape[0]:
        raise ValueError(f"{tokens.shape[0]} vision tokens do not match grids {grids.tolist()}")
    pooled = []
    start = 0
    for (t, _h, _w), count in zip(grids, counts):
        block = tokens[start:start + count].astype(np.float32).reshape(int(t), count // int(t), -1)
        means = block.mean(axis=1)
        norms = np.linalg.norm(means, axis=1, keepdims=True)
        pooled.append(means / np.maximum(norms, 1e-12))
        start += count
    return pooled
