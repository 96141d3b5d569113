"""Variants of a few real videos for the demo pool: other resolutions, bitrates, blur and noise.

Made at run time (nothing derived is committed), short and small so the tiny CPU model
scores the pool in about a minute.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

MAX_FRAMES = 100
MAX_WIDTH = 640


def _even(value: float) -> int:
    return max(16, int(value) // 2 * 2)


def _read(path: Path) -> tuple[list[np.ndarray], float]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or 25)
        frames = []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) >= MAX_FRAMES:
                break
    return frames, rate


def _write(path: Path, frames: list[np.ndarray], rate: float, *, crf: int = 23) -> Path:
    import av

    height, width = _even(frames[0].shape[0]), _even(frames[0].shape[1])
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=round(rate), options={"crf": str(crf), "preset": "veryfast"})
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        for pixels in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels[:height, :width]), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _resize(frames: list[np.ndarray], scale: float) -> list[np.ndarray]:
    from PIL import Image

    height, width = frames[0].shape[:2]
    size = (_even(width * scale), _even(height * scale))
    return [np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BICUBIC)) for f in frames]


def _blur(frames: list[np.ndarray], radius: float = 2.5) -> list[np.ndarray]:
    from PIL import Image, ImageFilter

    return [np.asarray(Image.fromarray(f).filter(ImageFilter.GaussianBlur(radius))) for f in frames]


def _noise(frames: list[np.ndarray], sigma: float = 18.0, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.clip(f + rng.normal(0, sigma, f.shape), 0, 255).astype(np.uint8) for f in frames]


VARIANTS: dict[str, tuple[Callable[[list[np.ndarray]], list[np.ndarray]], int]] = {
    "half-res": (lambda frames: _resize(frames, 0.5), 23),
    "low-bitrate": (lambda frames: frames, 45),
    "blur": (_blur, 23),
    "noise": (_noise, 23),
}


def derive_pool(sources: list[Path], folder: Path) -> list[Path]:
    """Write every variant of every source into ``folder`` (skipping ones already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sources:
        frames = None
        for variant, (transform, crf) in VARIANTS.items():
            target = folder / f"{source.stem}-{variant}.mp4"
            if not target.exists():
                if frames is None:
                    frames, rate = _read(source)
                    if frames and frames[0].shape[1] > MAX_WIDTH:
                        frames = _resize(frames, MAX_WIDTH / frames[0].shape[1])
                _write(target.with_suffix(".part.mp4"), transform(frames), rate, crf=crf).rename(target)
            written.append(target)
    return written
