"""Reading sampled frames from a video file with decord, at the model's input size.

decord (the maintained ``decord2`` distribution) can scale inside FFmpeg while it
converts from YUV. That saves the full-resolution RGB copy (time and memory) on real
downscales; elsewhere frames are decoded at source size and resized with the
reference's kernel. benchmarks/video_decode.py measures both against the reference.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import VideoError
from ..settings import VideoSettings
from .sampling import SamplingPlan, plan_sampling

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp", ".yuv"})


# Scale inside FFmpeg only for real downscales: there it skips a full-size RGB copy. For
# upscales and mild changes, re-opening the file costs more than resizing (benchmarks/).
IN_DECODER_SCALE_BELOW = 0.5


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic, antialiased resize of uint8 frames: the reference's own resize kernel."""
    import torch
    import torch.nn.functional as F

    batch = torch.from_numpy(frames).permute(0, 3, 1, 2)
    resized = F.interpolate(batch, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return np.ascontiguousarray(resized.permute(0, 2, 3, 1).numpy())


@dataclass(frozen=True)
class VideoProbe:
    total_frames: int
    fps: float
    height: int
    width: int


@dataclass(frozen=True)
class DecodedVideo:
    frames: np.ndarray  # (T, H, W, 3) uint8 at the planned size
    plan: SamplingPlan
    probe: VideoProbe


def _import_decord():
    try:
        import decord
    except ImportError as exc:  # pragma: no cover - dependency is declared
        raise VideoError("decord is not installed: pip install decord2") from exc
    decord.logging.set_level(decord.logging.QUIET)  # defects are reported as VideoError instead
    return decord


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoError(f"{path}: no such file")
    if path.is_dir():
        raise VideoError(f"{path}: is a directory, not a video")
    if not os.access(path, os.R_OK):
        raise VideoError(f"{path}: permission denied")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file")


def _open(path: Path, **kwargs):
    decord = _import_decord()
    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), **kwargs)
    except Exception as exc:  # decord raises DECORDError/RuntimeError for anything it cannot parse
        raise VideoError(f"{path}: not a decodable video ({_short(exc)})") from exc


_DECORD_LOCATION = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ")
_KNOWN_DEFECTS = {
    "cannot find video stream": "the file has no video stream",
    "Error reading": "unreadable container (not a video, or truncated before its index)",
}


def _short(exc: BaseException) -> str:
    """decord's message without its source locations, or a plain description of a known defect."""
    text = str(exc)
    for needle, meaning in _KNOWN_DEFECTS.items():
        if needle in text:
            return meaning
    lines = _DECORD_LOCATION.sub("", text).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def probe_video(path: str | os.PathLike) -> VideoProbe:
    path = Path(path)
    _check_file(path)
    reader = _open(path)
    try:
        height, width = reader[0].shape[:2] if len(reader) else (0, 0)
    except Exception as exc:
        raise VideoError(f"{path}: cannot decode the first frame ({_short(exc)})") from exc
    return VideoProbe(len(reader), float(reader.get_avg_fps()), int(height), int(width))


def decode_video(path: str | os.PathLike, settings: VideoSettings | None = None) -> DecodedVideo:
    """Sampled frames of ``path`` at the reference size; raises :class:`VideoError` on any defect."""
    settings = settings or VideoSettings()
    path = Path(path)
    _check_file(path)
    reader = _open(path)
    total = len(reader)
    if total == 0:
        raise VideoError(f"{path}: the video has no frames")
    fps = float(reader.get_avg_fps())
    try:
        height, width = reader[0].shape[:2]
    except Exception as exc:
        raise VideoError(f"{path}: cannot decode the first frame ({_short(exc)})") from exc
    if max(height, width) > settings.max_side:
        raise VideoError(
            f"{path}: resolution {width}x{height} exceeds the {settings.max_side}-pixel side limit "
            "(MDSVQA_VIDEO_MAX_SIDE)"
        )
    probe = VideoProbe(total, fps, int(height), int(width))
    try:
        plan = plan_sampling(
            total, fps, height, width,
            fps=settings.fps, min_frames=settings.min_frames, max_frames=settings.max_frames,
            min_pixels=settings.min_pixels, max_pixels=settings.max_pixels, total_pixels=settings.total_pixels,
        )
    except ValueError as exc:
        raise VideoError(f"{path}: {exc}") from exc

    scale_in_decoder = plan.height * plan.width < height * width * IN_DECODER_SCALE_BELOW
    if scale_in_decoder:
        del reader
        reader = _open(path, width=plan.width, height=plan.height)
    try:
        frames = reader.get_batch(list(plan.indices)).asnumpy()
    except Exception as exc:
        raise VideoError(f"{path}: decoding failed, the file may be truncated ({_short(exc)})") from exc
    if not scale_in_decoder and (plan.height, plan.width) != (height, width):
        frames = resize_frames(frames, plan.height, plan.width)
    if frames.shape != (plan.num_frames, plan.height, plan.width, 3):
        raise VideoError(f"{path}: decoder returned frames of shape {frames.shape}, expected "
                         f"{(plan.num_frames, plan.height, plan.width, 3)}")
    return DecodedVideo(frames, plan, probe)


def find_videos(paths: list[str | os.PathLike]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand files and folders into video files, plus the paths that could not be listed.

    Files named explicitly are always kept, whatever their suffix, so that a bad file
    is reported rather than skipped; folders contribute files with a video suffix,
    recursively and sorted. An unreadable folder (at any depth) is reported, not skipped.
    """
    found: list[Path] = []
    problems: list[tuple[Path, str]] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            found.append(path)
            continue

        def report(error: OSError) -> None:
            problems.append((Path(error.filename or path), f"cannot read directory: {error.strerror or error}"))

        children: list[Path] = []
        for folder, _dirs, files in os.walk(path, onerror=report):
            children.extend(Path(folder, name) for name in files if Path(name).suffix.lower() in VIDEO_SUFFIXES)
        found.extend(sorted(children))
    return found, problems
