"""Decode + sample + resize: our path against the reference path, per video, in one run.

Ours: decord decodes the sampled frames already scaled to the model size (FFmpeg scales
while converting from YUV). Reference (qwen-vl-utils): decode full-resolution RGB frames,
then resize them with bicubic, antialiased interpolation. Prints time of both, the
speed-up, and the mean absolute pixel difference between the two outputs (0-255 scale).

    python benchmarks/video_decode.py [--repeats 3] [--seconds 20] [--keep DIR]

The 1080p clip is made at run time from the shared videos (upscaled, looped to
``--seconds``), as SPEC's example: 20 s of 1080p becomes 40 frames at 560x1008.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ml_backend.video.decoding import decode_video  # noqa: E402

VIDEOS = REPO.parent / "shared" / "videos"


def reference_decode(path: Path, indices: list[int], height: int, width: int) -> np.ndarray:
    """Full-resolution RGB decode, then bicubic antialiased resize of the uint8 frames.

    This is what qwen-vl-utils does (torchvision's resize dispatches to the same uint8
    kernel of ``F.interpolate``); its later ``.float()`` is left out on both sides.
    """
    import decord
    import torch
    import torch.nn.functional as F

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    frames = torch.from_numpy(reader.get_batch(indices).asnumpy()).permute(0, 3, 1, 2)
    resized = F.interpolate(frames, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return resized.permute(0, 2, 3, 1).numpy()


def make_1080p_clip(target: Path, seconds: float) -> Path:
    """Upscale the Big Buck Bunny excerpt to 1920x1080 and loop it to ``seconds`` at 25 fps."""
    import av

    with av.open(str(VIDEOS / "bigbuckbunny.mp4")) as source:
        frames = [f.reformat(width=1920, height=1080, format="yuv420p") for f in source.decode(video=0)]
    count = int(seconds * 25)
    with av.open(str(target), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"preset": "veryfast", "crf": "23"})
        stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
        for i in range(count):
            frame = frames[i % len(frames)]
            frame.pts = None
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return target


def measure(path: Path, repeats: int) -> dict:
    ours_times, ref_times = [], []
    video = None
    reference = None
    for _ in range(repeats):
        start = time.perf_counter()
        video = decode_video(path)
        ours_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        reference = reference_decode(path, list(video.plan.indices), video.plan.height, video.plan.width)
        ref_times.append(time.perf_counter() - start)
    ours, ref = statistics.median(ours_times), statistics.median(ref_times)
    mad = float(np.abs(video.frames.astype(np.int16) - reference.astype(np.int16)).mean())
    return {
        "name": path.name,
        "source": f"{video.probe.width}x{video.probe.height}",
        "frames": f"{video.plan.num_frames}/{video.probe.total_frames}",
        "target": f"{video.plan.width}x{video.plan.height}",
        "ours_ms": ours * 1000,
        "ref_ms": ref * 1000,
        "speedup": ref / ours,
        "mad": mad,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="Runs per video; the median is reported.")
    parser.add_argument("--seconds", type=float, default=20.0, help="Length of the generated 1080p clip.")
    parser.add_argument("--keep", type=Path, help="Write the generated clip here instead of a temp dir.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        clip = make_1080p_clip(folder / "bigbuckbunny_1080p.mp4", args.seconds)
        print(f"made {clip.name} ({args.seconds:.0f} s, 1920x1080) in {time.perf_counter() - start:.1f} s\n")
        paths = sorted(VIDEOS.glob("*.mp4")) + [clip]
        rows = [measure(path, args.repeats) for path in paths]

    header = f"{'video':<26}{'source':>11}{'frames':>9}{'target':>10}{'ours ms':>10}{'ref ms':>10}{'speed-up':>10}{'MAD':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['name']:<26}{r['source']:>11}{r['frames']:>9}{r['target']:>10}{r['ours_ms']:>10.1f}"
              f"{r['ref_ms']:>10.1f}{r['speedup']:>9.2f}x{r['mad']:>7.2f}")
    hd = rows[-1]
    verdict = "meets" if hd["speedup"] >= 3 else "misses"
    print(f"\n1080p: {hd['speedup']:.2f}x faster than the reference path ({verdict} the 3x goal), "
          f"mean absolute pixel difference {hd['mad']:.2f}/255")
    return 0


if __name__ == "__main__":
    sys.exit(main())
