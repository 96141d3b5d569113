"""Synthetic pools for the selection benchmark: clustered, L2-normalised frame embeddings.

Shaped like CLIP frame features: videos belong to topic clusters, frames of a video
scatter around the video's own centre. Typical distances: ~0.4 between frames of a video,
~0.7 between videos of a cluster, ~1.3 across clusters.
"""

from __future__ import annotations

import numpy as np

DIM = 512
FRAMES_PER_VIDEO = 16


def synthetic_pool(n_videos: int, *, dim: int = DIM, frames_per_video: int = FRAMES_PER_VIDEO, seed: int = 0,
                   difficulty: str = "uniform") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(difficulty (N,), packed frames (N*frames, dim) float32, offsets (N+1,))."""
    rng = np.random.default_rng(seed)
    n_clusters = max(8, n_videos // 250)
    clusters = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    clusters /= np.linalg.norm(clusters, axis=1, keepdims=True)
    frames = np.empty((n_videos * frames_per_video, dim), dtype=np.float32)
    video_spread, frame_spread = 0.5 / np.sqrt(dim), 0.3 / np.sqrt(dim)
    step = 4096
    for start in range(0, n_videos, step):
        stop = min(start + step, n_videos)
        centres = clusters[rng.integers(0, n_clusters, stop - start)]
        centres = centres + video_spread * rng.standard_normal(centres.shape, dtype=np.float32)
        block = frames[start * frames_per_video : stop * frames_per_video].reshape(stop - start, frames_per_video, dim)
        block[:] = centres[:, None, :]
        block += frame_spread * rng.standard_normal(block.shape, dtype=np.float32)
        block /= np.linalg.norm(block, axis=2, keepdims=True)
    if difficulty == "uniform":
        scores = np.round(rng.uniform(1.0, 5.0, n_videos), 2)
    elif difficulty == "normal":
        scores = np.round(np.clip(rng.normal(3.0, 0.7, n_videos), 1.0, 5.0), 2)
    elif difficulty == "constant":
        scores = np.full(n_videos, 3.0)
    else:
        raise ValueError(f"unknown difficulty distribution {difficulty!r}")
    offsets = np.arange(n_videos + 1, dtype=np.int64) * frames_per_video
    return scores, frames, offsets
