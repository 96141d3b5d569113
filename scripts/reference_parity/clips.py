"""Deterministic synthetic video clips for the reference parity goldens.

Imported both by the reference virtualenv (``make_goldens.py``) and by the project's
tests, so it depends on numpy and PyAV only. Frame content is built with integer
arithmetic (no floating point), so the RGB input of the encoder is identical on every
platform; the encoder is libx264, single-threaded with fixed options, so the bytes of
a clip are reproducible for the same PyAV/FFmpeg/x264 build. Tests should compare a
clip's SHA-256 with the golden's ``file_sha256`` before trusting a pixel comparison.

Every case is a function ``case(out_dir) -> Path`` that writes ``<out_dir>/<case>.mp4``
and returns its path; ``CASES`` maps the case names (the keys of ``SPECS``) to them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# A payload for one H.264 access unit that holds only a filler-data NAL unit
# (4-byte AVCC length prefix, NAL type 12, one 0xff byte, RBSP stop bit): the sample
# exists in the container's index but decodes to no picture.
_FILLER_ACCESS_UNIT = b"\x00\x00\x00\x03\x0c\xff\x80"

MARKER_BITS = 14
"""Bits of the frame index drawn as a black/white bar code in the top-left corner."""


@dataclass(frozen=True)
class ClipSpec:
    """How one synthetic clip is rendered and encoded."""

    name: str
    width: int
    height: int
    rate: Fraction
    frames: int
    pix_fmt: str = "yuv420p"
    preset: str = "veryfast"
    crf: int = 28
    keyint: int = 50
    bframes: int = 3
    blank_last_sample: bool = False
    """Replace the last coded sample with a filler-only access unit (see ``short1``)."""

    @property
    def x264_params(self) -> str:
        """Fixed x264 parameters: a fixed GOP and B-frame pattern, and no lookahead.

        With x264's lookahead (rc-lookahead, mb-tree, adaptive B-frames), clips whose
        sides are not multiples of 16 came out with different bytes from one encode to
        the next in the same process (likely uninitialised padding read by the lookahead);
        without it, repeated encodes are byte-identical.
        """
        return (
            f"keyint={self.keyint}:min-keyint={self.keyint}:scenecut=0:bframes={self.bframes}"
            ":b-adapt=0:rc-lookahead=0:mbtree=0"
        )


def _triangle(values: np.ndarray) -> np.ndarray:
    """Integer triangle wave with period 512 and range 0..255."""
    return np.minimum(np.abs(values % 512 - 256), 255)


def _block_hash(bx: np.ndarray, by: np.ndarray, seed: int) -> np.ndarray:
    """Pseudo-random integers in -40..40, one per (block column, block row)."""
    h = (bx * 73856093) ^ (by * 19349663) ^ (seed * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    return (h >> 7) % 81 - 40


def render_frame(index: int, width: int, height: int) -> np.ndarray:
    """RGB uint8 frame ``index`` of a clip: moving gradients, a drifting block texture
    and the frame index as a bar code. Pure integer arithmetic, so bit-exact everywhere."""
    x = np.arange(width, dtype=np.int64)
    y = np.arange(height, dtype=np.int64)
    red = _triangle(x * 1024 // width + 6 * index)[None, :]
    green = _triangle(y * 1024 // height + 4 * index)[:, None]
    diagonal = (x[None, :] + 2 * y[:, None]).astype(np.int32)
    blue = _triangle(diagonal * 512 // (width + 2 * height) + 9 * index)

    # A texture of pseudo-random blocks drifting right and down; hashed per block only.
    block = max(4, min(width, height) // 12)
    bx = (x + 2 * index) // block
    by = (y + index) // block
    table = _block_hash(
        np.arange(bx[0], bx[-1] + 1)[None, :], np.arange(by[0], by[-1] + 1)[:, None], index // 15
    )
    texture = table[(by - by[0])[:, None], (bx - bx[0])[None, :]].astype(np.int16)

    frame = np.empty((height, width, 3), dtype=np.int16)
    frame[..., 0] = red + texture
    frame[..., 1] = green - texture
    frame[..., 2] = blue + texture // 2

    cell = max(3, min(width, height) // 48)
    if cell * MARKER_BITS <= width and 2 * cell <= height:
        for bit in range(MARKER_BITS):
            level = 255 if (index >> bit) & 1 else 0
            frame[:cell, bit * cell : (bit + 1) * cell, :] = level
            frame[cell : 2 * cell, bit * cell : (bit + 1) * cell, :] = 255 - level
    return np.clip(frame, 0, 255).astype(np.uint8)


def encode(spec: ClipSpec, out_dir: Path | str) -> Path:
    """Render and encode ``spec`` to ``<out_dir>/<name>.mp4`` and return the path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{spec.name}.mp4"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=spec.rate)
        stream.width = spec.width
        stream.height = spec.height
        stream.pix_fmt = spec.pix_fmt
        stream.codec_context.thread_count = 1
        stream.options = {
            "preset": spec.preset,
            "crf": str(spec.crf),
            "threads": "1",
            "x264-params": spec.x264_params,
        }
        packets: list[av.Packet] = []
        for index in range(spec.frames):
            frame = av.VideoFrame.from_ndarray(render_frame(index, spec.width, spec.height), format="rgb24")
            frame.pts = index
            packets.extend(stream.encode(frame))
            if not spec.blank_last_sample:  # stream packets out unless the last one is needed
                for packet in packets:
                    container.mux(packet)
                packets.clear()
        packets.extend(stream.encode())
        if spec.blank_last_sample:
            packets[-1] = _blanked(packets[-1], stream)
        for packet in packets:
            container.mux(packet)
    return path


def _blanked(packet: av.Packet, stream: av.VideoStream) -> av.Packet:
    """A copy of ``packet`` (same timestamps) whose payload decodes to no picture."""
    blank = av.Packet(_FILLER_ACCESS_UNIT)
    blank.pts = packet.pts
    blank.dts = packet.dts
    blank.time_base = packet.time_base
    blank.stream = stream
    return blank


SPECS: dict[str, ClipSpec] = {
    spec.name: spec
    for spec in (
        # 29.97 fps NTSC rate, 7 s (210 frames).
        ClipSpec("fps2997", 320, 240, Fraction(30000, 1001), 210),
        # 60 fps, 5 s.
        ClipSpec("fps60", 320, 180, Fraction(60), 300, keyint=60),
        # 9:16 portrait, 4 s at 25 fps.
        ClipSpec("portrait", 360, 640, Fraction(25), 100),
        # 4K UHD, 1.2 s at 25 fps; the fastest preset keeps the encode cheap.
        ClipSpec("wide4k", 3840, 2160, Fraction(25), 30, preset="ultrafast"),
        # 62 coded samples, the last one decodes to nothing: the container (and decord's
        # len()) claims 62 frames, only 61 can be decoded. No B-frames, so the missing
        # picture is the last one in display order too.
        ClipSpec("short1", 160, 120, Fraction(25), 62, bframes=0, blank_last_sample=True),
        # 6.5 min at 25 fps (9750 frames), tiny and cheap: 2 fps would give 780 frames,
        # so the 768-frame cap applies.
        ClipSpec("long6min", 64, 48, Fraction(25), 9750, preset="ultrafast", crf=45, keyint=250),
        # Odd sizes, 3 s at 24 fps. 4:2:0 H.264 cannot have odd sizes, so this one is 4:4:4.
        ClipSpec("odd", 333, 197, Fraction(24), 72, pix_fmt="yuv444p", keyint=48),
    )
}


def _case(spec: ClipSpec) -> Callable[[Path | str], Path]:
    def make(out_dir: Path | str) -> Path:
        return encode(spec, out_dir)

    make.__name__ = make.__qualname__ = spec.name
    make.__doc__ = f"{spec.width}x{spec.height} at {spec.rate} fps, {spec.frames} frames (see SPECS)."
    return make


CASES: dict[str, Callable[[Path | str], Path]] = {name: _case(spec) for name, spec in SPECS.items()}
"""Case name -> function writing ``<out_dir>/<case>.mp4``: one per entry of SPECS."""


def generate_all(out_dir: Path | str) -> dict[str, Path]:
    """Write every case into ``out_dir``; returns case name -> path."""
    return {name: make(out_dir) for name, make in CASES.items()}


def _main(argv: list[str]) -> int:
    """``python clips.py OUT_DIR [REPEATS]``: write every clip, print size, time and
    SHA-256; with REPEATS > 1 encode each clip that many times and fail if bytes vary."""
    import hashlib
    import time

    target = Path(argv[0] if argv else "clips")
    repeats = int(argv[1]) if len(argv) > 1 else 1
    stable = True
    for case, make in CASES.items():
        start = time.perf_counter()
        digests = {hashlib.sha256(make(target).read_bytes()).hexdigest() for _ in range(repeats)}
        size = (target / f"{case}.mp4").stat().st_size
        elapsed = (time.perf_counter() - start) / repeats
        stable &= len(digests) == 1
        print(f"{case:10s} {size:9d} B  {elapsed:5.2f} s  {' '.join(sorted(digests))}")
    return 0 if stable else 1


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
