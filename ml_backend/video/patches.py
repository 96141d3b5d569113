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


# Temporal patches normalised per step: the float64/float32 temporaries stay at a few MB
# instead of several copies of the whole video (each step's values are computed exactly as
# for the whole video at once: every operation is elementwise or a reordering).
PATCH_STEP = 8


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
    grid = video_grid(t_count, height, width, layout)
    grid_t, grid_h, grid_w = (int(x) for x in grid)
    rows = grid_h * grid_w  # patches of one temporal patch
    out = np.empty((grid_t * rows, 3 * tp * ps * ps), dtype=np.float32)
    mean = np.asarray(layout.mean, dtype=np.float32)
    std = np.asarray(layout.std, dtype=np.float32)
    table = _value_table(mean, std) if frames.dtype == np.uint8 else None
    for start in range(0, grid_t, PATCH_STEP):
        steps = min(PATCH_STEP, grid_t - start)
        chunk = frames[start * tp:(start + steps) * tp]
        if len(chunk) < steps * tp:  # an odd T: repeat the last frame (after normalising: same values)
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], steps * tp - len(chunk), axis=0)])
        target = out[start * rows:(start + steps) * rows]
        if table is not None:
            # uint8 frames: reorder the bytes into patch order first, then look each value up (the
            # table holds the arithmetic below for all 256 values: the same float32 bit for bit, ~3x faster)
            blocks = chunk.reshape(steps, tp, grid_h // ms, ms, ps, grid_w // ms, ms, ps, 3)
            blocks = np.ascontiguousarray(blocks.transpose(0, 2, 5, 3, 6, 8, 1, 4, 7))  # ..., C, tp, ps, ps
            values = blocks.reshape(steps * rows, 3, tp * ps * ps)
            view = target.reshape(steps * rows, 3, tp * ps * ps)
            for channel in range(3):
                np.take(table[channel], values[:, channel], out=view[:, channel])
            continue
        # Same arithmetic as the HF processor: rescale in float64, then normalise in float32.
        pixels = (chunk.astype(np.float64) * (1 / 255)).astype(np.float32)
        pixels = ((pixels - mean) / std).transpose(0, 3, 1, 2)  # T, C, H, W
        blocks = pixels.reshape(steps, tp, 3, grid_h // ms, ms, ps, grid_w // ms, ms, ps)
        blocks = blocks.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
        target[:] = blocks.reshape(steps * rows, 3 * tp * ps * ps)
    return out, grid


def _value_table(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(3, 256) float32: each channel's normalised value of every uint8, by the HF processor's arithmetic."""
    rescaled = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
    return np.ascontiguousarray(((rescaled[:, None] - mean) / std).T)


def video_grid(num_frames: int, height: int, width: int, layout: PatchLayout = PatchLayout()) -> np.ndarray:
    """``video_grid_thw`` of ``num_frames`` frames of height x width (multiples of patch*merge).

    An odd frame count is padded to the next multiple of the temporal patch (ceiling), as
    :func:`video_patches` does.
    """
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    tp, ps = layout.temporal_patch_size, layout.patch_size
    return np.array([-(-num_frames // tp), height // ps, width // ps], dtype=np.int64)


def planned_token_count(num_frames: int, height: int, width: int, layout: PatchLayout = PatchLayout()) -> int:
    """Visual tokens a video of ``num_frames`` frames at height x width becomes in the model.

    Known before any pixel is read (from the sampling plan): ceil(T / temporal patch) x
    (H / patch) x (W / patch) patches, merged merge x merge into one token each. A 10 min
    video at 2 fps (768 frames) of 392x280: 384 x 20 x 28 / 4 = 53,760 tokens.
    """
    if height % layout.size_factor or width % layout.size_factor:
        raise ValueError(f"frame size {width}x{height} is not a multiple of {layout.size_factor}")
    return video_token_count(video_grid(num_frames, height, width, layout), layout.merge_size)


def video_token_count(grid_thw: np.ndarray, merge_size: int = 2) -> int:
    """Number of video placeholder tokens the text must hold for this grid."""
    return int(np.prod(grid_thw)) // (merge_size * merge_size)
