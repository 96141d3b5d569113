"""Frames to the patch tensor Qwen2.5-VL takes (``pixel_values_videos``, ``video_grid_thw``).

Our own numpy version of what the Hugging Face Qwen2-VL image processor does to a
video, so that preprocessing does not depend on a transformers line or torchvision
(docs/DESIGN.md). Checked bit for bit against ``shared/golden``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PatchLayout:
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    @property
    def size_factor(self) -> int:
        return self.patch_size * self.merge_size


def video_patches(frames: np.ndarray, layout: PatchLayout = PatchLayout()) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W, 3) uint8 frames -> (patches (t*h*w, 3*tp*p*p) float32, grid (3,) int64).

    H and W must be multiples of patch*merge; an odd T repeats the last frame.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3) frames, got shape {frames.shape}")
    t_count, height, width, _ = frames.shape
    factor = layout.size_factor
    if height % factor or width % factor:
        raise ValueError(f"frame size {width}x{height} is not a multiple of {factor}")
    tp, ps, ms = layout.temporal_patch_size, layout.patch_size, layout.merge_size

    # Same arithmetic as the HF processor: rescale in float64, then normalise in float32.
    pixels = (frames.astype(np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(layout.mean, dtype=np.float32)
    std = np.asarray(layout.std, dtype=np.float32)
    pixels = ((pixels - mean) / std).transpose(0, 3, 1, 2)  # T, C, H, W

    remainder = t_count % tp
    if remainder:
        pixels = np.concatenate([pixels, np.repeat(pixels[-1:], tp - remainder, axis=0)])
    grid_t, grid_h, grid_w = pixels.shape[0] // tp, height // ps, width // ps
    blocks = pixels.reshape(grid_t, tp, 3, grid_h // ms, ms, ps, grid_w // ms, ms, ps)
    blocks = blocks.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = np.ascontiguousarray(blocks).reshape(grid_t * grid_h * grid_w, 3 * tp * ps * ps)
    return flat, np.array([grid_t, grid_h, grid_w], dtype=np.int64)


def video_token_count(grid_thw: np.ndarray, merge_size: int = 2) -> int:
    """Number of video placeholder tokens the text must hold for this grid."""
    return int(np.prod(grid_thw)) // (merge_size * merge_size)
