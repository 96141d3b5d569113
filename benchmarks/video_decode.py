"""Decode + sample + resize: our two modes against the reference path, per video, in one run.

Reference (qwen-vl-utils): decode all sampled frames at full resolution, then torchvision's
bicubic antialiased uint8 resize of the whole batch. Ours, default ``exact``: the same
kernel, 16 frames at a time (bounded memory, same pixels). Ours, opt-in ``decoder``:
FFmpeg scales real downscales while converting from YUV. Prints the time of each, the
speed-up against the reference, and the mean absolute pixel difference (0-255 scale).

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
    import torch  # before decord (see ml_backend.video.decoding)

    # isort: split
    import decord
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    frames = torch.from_numpy(reader.get_batch(indices).asnumpy()).permute(0, 3, 1, 2)
    resized = resize(frames, [height, width], interpolation=InterpolationMode.BICUBIC, antialias=True)
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
    from ml_backend.settings import VideoSettings

    times: dict[str, list[float]] = {"exact": [], "decoder": [], "ref": []}
    decode_video(path)  # warm-up: imports and first-call kernel set-up stay out of the timings
    outputs: dict[str, np.ndarray] = {}
    video = None
    for _ in range(repeats):
        for mode in ("exact", "decoder"):
            start = time.perf_counter()
            video = decode_video(path, VideoSettings(resize=mode))
            times[mode].append(time.perf_counter() - start)
            outputs[mode] = video.frames
        start = time.perf_counter()
        outputs["ref"] = reference_decode(path, list(video.plan.indices), video.plan.height, video.plan.width)
        times["ref"].append(time.perf_counter() - start)
    median = {mode: statistics.median(values) for mode, values in times.items()}

    def mad(mode: str) -> float:
        return float(np.abs(outputs[mode].astype(np.int16) - outputs["ref"].astype(np.int16)).mean())

    return {
        "name": path.name,
        "source": f"{video.probe.width}x{video.probe.height}",
        "frames": f"{video.plan.num_frames}/{video.probe.total_frames}",
        "target": f"{video.plan.width}x{video.plan.height}",
        "exact_ms": median["exact"] * 1000, "decoder_ms": median["decoder"] * 1000, "ref_ms": median["ref"] * 1000,
        "exact_x": median["ref"] / median["exact"], "decoder_x": median["ref"] / median["decoder"],
        "exact_mad": mad("exact"), "decoder_mad": mad("decoder"),
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
        paths = [*sorted(VIDEOS.glob("*.mp4")), clip]
        rows = [measure(path, args.repeats) for path in paths]

    header = (f"{'video':<26}{'source':>11}{'frames':>9}{'target':>10}{'ref ms':>9}{'exact ms':>10}{'x':>6}"
              f"{'MAD':>6}{'decoder ms':>12}{'x':>6}{'MAD':>6}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['name']:<26}{r['source']:>11}{r['frames']:>9}{r['target']:>10}{r['ref_ms']:>9.1f}"
              f"{r['exact_ms']:>10.1f}{r['exact_x']:>5.2f}x{r['exact_mad']:>6.2f}"
              f"{r['decoder_ms']:>12.1f}{r['decoder_x']:>5.2f}x{r['decoder_mad']:>6.2f}")
    hd = rows[-1]
    print(f"\n1080p: exact (default) {hd['exact_x']:.2f}x the reference path's speed "
          f"with MAD {hd['exact_mad']:.2f}/255; decoder mode {hd['decoder_x']:.2f}x "
          f"with MAD {hd['decoder_mad']:.2f}/255")
    return 0


if __name__ == "__main__":
    sys.exit(main())
