"""Reading sampled frames from a video file with decord, at the model's input size.

Exact by default: frames are decoded at source size and resized with the reference's
own kernel (torchvision's bicubic antialiased uint8 resize), a few frames at a time so
memory stays bounded. decord (the maintained ``decord2`` distribution) can instead
scale inside FFmpeg (``VideoSettings.resize = "decoder"``): faster on real downscales,
but the pixels differ, so it is an opt-in mode with its own cache key.

One pass can serve two consumers: the scorer's sampled frames and, through
``every_frame``, each decoded frame at source size (the selection features), so a
video is decoded once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import VideoError
from ..settings import VideoSettings
from .sampling import SamplingPlan, plan_sampling

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".wmv",
                            ".3gp", ".yuv"})


# In "decoder" mode, scale inside FFmpeg only for real downscales: there it skips a
# full-size RGB copy. For upscales and mild changes, re-opening the file costs more.
IN_DECODER_SCALE_BELOW = 0.5
# Frames decoded (at source size) per step: bounds memory for long or large videos. The
# resize treats every frame on its own, so the chunk size never changes a pixel.
DECODE_CHUNK = 16
# decord's decoding threads per open video; 0 = FFmpeg's choice (about one per core). Decode
# worker processes, one per core, use 1 (``scoring.prepare.init_worker``). The decoded frames
# do not depend on it.
DECODER_THREADS = 0

FrameSink = Callable[[np.ndarray, int], None]
"""Receives (frames uint8 (n, H, W, 3) at source size, index of the first) for every frame, in order."""


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """The reference's resize: torchvision bicubic, antialiased, on uint8 (T, C, H, W), back to uint8."""
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize

    batch = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    resized = resize(batch, [height, width], interpolation=InterpolationMode.BICUBIC, antialias=True)
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
    # decord2 loads every site-packages/nvidia/*/lib/*.so globally (libnvblas among them); when
    # torch comes after it, torch's CPU matrix products crash. torch first keeps its own BLAS.
    import torch  # noqa: F401

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
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=DECODER_THREADS, **kwargs)
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


def decode_video(path: str | os.PathLike, settings: VideoSettings | None = None, *,
                 every_frame: FrameSink | None = None,
                 adjust_plan: Callable[[SamplingPlan], SamplingPlan] | None = None,
                 check_plan: Callable[[SamplingPlan], None] | None = None) -> DecodedVideo:
    """Sampled frames of ``path`` at the reference size; raises :class:`VideoError` on any defect.

    ``every_frame``: also hand every decoded frame (source size, in order) to this sink.
    ``adjust_plan``: change the inference plan before decoding (training draws frames from it).
    ``check_plan``: sees the final plan before any sampled frame is read and may refuse it by
    raising a :class:`VideoError` (the scorer's visual-token budget); only the first frame has
    been decoded by then (for its size).
    """
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
            second_per_grid=settings.second_per_grid,
        )
        if adjust_plan is not None:
            plan = adjust_plan(plan)
    except ValueError as exc:
        raise VideoError(f"{path}: {exc}") from exc
    if check_plan is not None:
        check_plan(plan)

    if every_frame is None and settings.resize == "decoder" and \
            plan.height * plan.width < height * width * IN_DECODER_SCALE_BELOW:
        del reader
        reader = _open(path, width=plan.width, height=plan.height)
        frames = _read(path, reader, list(plan.indices))
    else:
        frames = _read_resized(path, reader, plan, probe, every_frame)
    if frames.shape != (plan.num_frames, plan.height, plan.width, 3):
        raise VideoError(f"{path}: decoder returned frames of shape {frames.shape}, expected "
                         f"{(plan.num_frames, plan.height, plan.width, 3)}")
    return DecodedVideo(frames, plan, probe)


def _read(path: Path, reader, indices: list[int]) -> np.ndarray:
    try:
        return reader.get_batch(indices).asnumpy()
    except Exception as exc:
        raise VideoError(f"{path}: decoding failed, the file may be truncated ({_short(exc)})") from exc


def _read_resized(path: Path, reader, plan: SamplingPlan, probe: VideoProbe,
                  every_frame: FrameSink | None) -> np.ndarray:
    """Sampled frames at the planned size, decoded a chunk of consecutive frames at a time."""
    out = np.empty((plan.num_frames, plan.height, plan.width, 3), dtype=np.uint8)
    resize = (plan.height, plan.width) != (probe.height, probe.width)
    total = probe.total_frames
    wanted = list(plan.indices)
    done = 0
    # Consecutive ranges up to the last wanted frame, never a jump: decord's seeking returns a
    # neighbouring frame now and then on streams with B-frames (seen on a 1080p clip: up to 9 of
    # 38 sampled frames, differently from run to run), sequential decoding never does.
    last = total if every_frame is not None else wanted[-1] + 1
    chunks = [list(range(i, min(last, i + DECODE_CHUNK))) for i in range(0, last, DECODE_CHUNK)]
    for chunk in chunks:
        frames = _read(path, reader, chunk)
        if every_frame is not None:
            every_frame(frames, chunk[0])
        frames = frames[[i - chunk[0] for i in wanted[done:] if i <= chunk[-1]]]
        if len(frames) == 0:
            continue
        out[done:done + len(frames)] = resize_frames(frames, plan.height, plan.width) if resize else frames
        done += len(frames)
    if done != plan.num_frames:
        raise VideoError(f"{path}: decoded {done} of the {plan.num_frames} sampled frames")
    return out


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

        def report(error: OSError, root: Path = path) -> None:
            problems.append((Path(error.filename or root), f"cannot read directory: {error.strerror or error}"))

        children: list[Path] = []
        for folder, _dirs, files in os.walk(path, onerror=report):
            children.extend(Path(folder, name) for name in files if Path(name).suffix.lower() in VIDEO_SUFFIXES)
        found.extend(sorted(children))
    return found, problems
