"""Frame count, frame indices and frame size, exactly as the reference samples videos (SPEC 3).

Pure arithmetic, no I/O: the decoder asks this module what to read. Exact means the
reference's own number types too: indices come from a float32 ``torch.linspace`` rounded
half to even, and the per-frame pixel ceiling stays a float (only the area comparison
uses it), so that every size and index equals qwen-vl-utils 0.0.10's.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from typing import Literal

FRAME_FACTOR = 2  # frames come in pairs (temporal patch 2)
SIZE_FACTOR = 28  # patch 14 x spatial merge 2
MAX_ASPECT_RATIO = 200
# The processor's default frame rate. The reference never passes the sampled fps to the
# processor, so every video gets second_per_grid_ts = FRAME_FACTOR / PROCESSOR_FPS = 1.0.
PROCESSOR_FPS = 2.0


def _round_to(value: float, factor: int) -> int:
    return round(value / factor) * factor


def _ceil_to(value: float, factor: int) -> int:
    return math.ceil(value / factor) * factor


def _floor_to(value: float, factor: int) -> int:
    return math.floor(value / factor) * factor


@dataclass(frozen=True)
class SamplingPlan:
    """What to decode from one video and how large."""

    indices: tuple[int, ...]
    height: int
    width: int
    sample_fps: float
    seconds_per_grid: float = FRAME_FACTOR / PROCESSOR_FPS
    """``second_per_grid_ts``: the temporal RoPE spacing the model is given (reference: 1.0)."""

    @property
    def num_frames(self) -> int:
        return len(self.indices)


def frame_count(total_frames: int, video_fps: float, *, fps: float = 2.0,
                min_frames: int = 4, max_frames: int = 768) -> int:
    """Number of frames to sample: ``fps`` per second, even, within bounds and the video's length."""
    if total_frames < FRAME_FACTOR:
        raise ValueError(f"video has {total_frames} frame(s); at least {FRAME_FACTOR} are needed")
    if video_fps <= 0 or not math.isfinite(video_fps):
        raise ValueError(f"video reports an invalid frame rate ({video_fps})")
    lower = _ceil_to(min_frames, FRAME_FACTOR)
    upper = _floor_to(min(max_frames, total_frames), FRAME_FACTOR)
    wanted = total_frames / video_fps * fps
    count = _floor_to(min(max(wanted, lower), upper, total_frames), FRAME_FACTOR)
    if not FRAME_FACTOR <= count <= total_frames:
        raise ValueError(f"cannot sample {count} frames from {total_frames}")
    return count


def frame_indices(total_frames: int, count: int) -> tuple[int, ...]:
    """Evenly spaced frame indices from first to last frame.

    float32 ``torch.linspace`` then round half to even, as the reference: float64 spacing
    picks a different frame wherever a position lands near .5 in float32.
    """
    import torch

    return tuple(torch.linspace(0, total_frames - 1, count, dtype=torch.float32).round().long().tolist())


def frame_max_pixels(count: int, *, min_pixels: int, max_pixels: int, total_pixels: int) -> float:
    """Per-frame area ceiling: the per-frame cap, shrunk so all frames fit the total budget.

    A float, as in the reference: truncating it would shrink some frames by one step of 28.
    """
    budget = min(max_pixels, total_pixels / count * FRAME_FACTOR)
    return max(budget, int(min_pixels * 1.05))


def smart_resize(height: int, width: int, *, min_pixels: float, max_pixels: float,
                 factor: int = SIZE_FACTOR) -> tuple[int, int]:
    """Target (height, width): aspect kept, sides multiples of ``factor``, area in [min, max]."""
    if height <= 0 or width <= 0:
        raise ValueError(f"invalid frame size {width}x{height}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"aspect ratio of {width}x{height} exceeds {MAX_ASPECT_RATIO}:1")
    new_h = max(factor, _round_to(height, factor))
    new_w = max(factor, _round_to(width, factor))
    if new_h * new_w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        new_h = max(factor, _floor_to(height / beta, factor))
        new_w = max(factor, _floor_to(width / beta, factor))
    elif new_h * new_w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        new_h = _ceil_to(height * beta, factor)
        new_w = _ceil_to(width * beta, factor)
    return new_h, new_w


def plan_sampling(total_frames: int, video_fps: float, height: int, width: int, *,
                  fps: float = 2.0, min_frames: int = 4, max_frames: int = 768,
                  min_pixels: int = 128 * 28 * 28, max_pixels: int = 768 * 28 * 28,
                  total_pixels: int = 90_316_800,
                  second_per_grid: Literal["reference", "sampled"] = "reference") -> SamplingPlan:
    """What to read from a video and at which size.

    ``second_per_grid``: "reference" gives every video 1.0 s per temporal patch, as the
    published checkpoints were trained and evaluated; "sampled" gives the true spacing
    (2 / sampled fps), for checkpoints trained that way.
    """
    count = frame_count(total_frames, video_fps, fps=fps, min_frames=min_frames, max_frames=max_frames)
    ceiling = frame_max_pixels(count, min_pixels=min_pixels, max_pixels=max_pixels, total_pixels=total_pixels)
    new_h, new_w = smart_resize(height, width, min_pixels=min_pixels, max_pixels=ceiling)
    sample_fps = count / total_frames * video_fps
    spacing = FRAME_FACTOR / (PROCESSOR_FPS if second_per_grid == "reference" else sample_fps)
    return SamplingPlan(frame_indices(total_frames, count), new_h, new_w, sample_fps, spacing)


def training_plan(plan: SamplingPlan, *, side: int, frames: int, rng: random.Random) -> SamplingPlan:
    """The reference's training input from the 2-fps plan: ``frames`` random frames, sorted, squashed.

    The reference fetches the video at 2 fps resized to ``side`` x ``side`` (aspect ratio
    not kept; 512 asked, 504 after rounding to 28) and draws ``frames`` of those frames at
    random, kept in time order, anew at every step. All of them when there are fewer.
    """
    if side % SIZE_FACTOR:
        raise ValueError(f"training frame side {side} is not a multiple of {SIZE_FACTOR}")
    picks = sorted(rng.sample(range(plan.num_frames), frames)) if plan.num_frames > frames else range(plan.num_frames)
    return replace(plan, indices=tuple(plan.indices[i] for i in picks), height=side, width=side)
