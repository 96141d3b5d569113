"""Peak memory of scoring one long video with the tiny test model: 1-10 min, 64x48 and 1080p.

Each case runs in a fresh subprocess (so that its RSS high-water mark, VmHWM, is its own):
load the tiny random Qwen2.5-VL, then score one video with ``DifficultyScorer`` exactly as
``mdsvqa score`` does. Prints one table row per case: the visual tokens of the video (from
its sampling plan), the budget in force, what happened (scored / refused / failed), the
high-water mark after loading the model and after scoring, and the growth per token.

    python benchmarks/video_memory.py [--minutes 1,2,5,10] [--sizes 64x48,1920x1080]
        [--source DIR] [--limit-gb 16] [--keep DIR] [--budget N] [--pair]

``--pair`` scores each video in one batch with a 5 s clip of the same size (batch size 2),
as the backend batches whatever is queued: the prompts then differ in length and need a
left-padding mask.

Videos are made at run time with PyAV in a temporary folder: 64x48 at 25 fps (the
hostile peer's 10 min video is 173 KB), 1080p at 5 fps of smooth low-complexity content
(quick to encode; the sampler takes 2 fps either way, so the frames sampled, their size and
the tokens are those of a 25 fps source). ``--source`` runs the cases against another
checkout of the project (e.g. ``git archive HEAD~3 | tar -x -C /tmp/before``) for a before /
after comparison. ``--limit-gb`` caps each child's address space (RLIMIT_AS) so that a case
that would exhaust the machine fails inside its child instead (reported as such).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def high_water_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- videos -----------------------------------------------------------------------------------

def make_video(path: Path, seconds: float, width: int, height: int, fps: int) -> Path:
    """Smooth moving gradients, H.264 ultrafast: a few distinct frames cycled (encodes fast at 1080p)."""
    import av
    import numpy as np

    yy, xx = np.mgrid[0:height, 0:width]
    distinct = []
    for t in range(min(50, int(seconds * fps))):
        rgb = np.empty((height, width, 3), dtype=np.uint8)
        for c in range(3):
            rgb[..., c] = ((xx * (c + 1) * 255 // max(1, width) + yy * 128 // max(1, height) + 5 * t) % 256)
        distinct.append(av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p"))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "28"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(int(seconds * fps)):
            frame = distinct[i % len(distinct)]
            frame.pts = None
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


# -- one case, in a fresh process -------------------------------------------------------------

def child(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(args.source))
    import torch

    torch.set_num_threads(1)
    from ml_backend.scoring.scorer import DifficultyScorer
    from ml_backend.settings import Settings
    from ml_backend.video.decoding import probe_video
    from ml_backend.video.sampling import plan_sampling

    settings = Settings(base=args.base, adapter=args.adapter, use_cache=False, cache_dir=args.cache,
                        **({"max_visual_tokens": args.budget} if args.budget is not None else {}))
    import logging

    video = Path(args.child)
    retried: list[str] = []

    class Retries(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "one video at a time" in record.getMessage() or "one at a time" in record.getMessage():
                retried.append(record.getMessage())

    logging.getLogger("ml_backend").addHandler(Retries())
    logging.getLogger("ml_backend").setLevel(logging.INFO)
    probe = probe_video(video)
    plan = plan_sampling(probe.total_frames, probe.fps, probe.height, probe.width)
    # The benchmark's own arithmetic (the checkout under test may predate planned_token_count).
    tokens = -(-plan.num_frames // 2) * (plan.height // 14) * (plan.width // 14) // 4
    scorer = DifficultyScorer.from_settings(settings)
    loaded = scorer.loaded
    budget = None
    try:
        from ml_backend.scoring.budget import token_budget
    except ImportError:  # a checkout without a budget
        pass
    else:
        budget = token_budget(settings, loaded).tokens
    after_load = high_water_mb()
    start = time.perf_counter()
    try:
        paths = [video, Path(args.pair)] if args.pair else [video]
        result = next(r for r in scorer.score_paths(paths) if r.path == video)
        error = result.error
        outcome = "scored" if result.ok else ("refused" if error and "visual tokens" in error else "failed")
    except MemoryError as exc:
        error, outcome = f"MemoryError: {exc}", "out of memory"
    seconds = time.perf_counter() - start
    peak = high_water_mb()
    Path(args.json).write_text(json.dumps({
        "frames": plan.num_frames, "size": f"{plan.width}x{plan.height}", "tokens": tokens, "budget": budget,
        "outcome": outcome, "error": error, "after_load_mb": after_load, "peak_mb": peak, "seconds": seconds,
        "attention": loaded.runtime.attention, "batch_split": retried[0] if retried else None,
    }))


def _split_note(message: str | None) -> str:
    if not message:
        return ""
    return " (batch failed, retried one by one)" if "failed" in message else " (batch split by the budget)"


def run_case(args: argparse.Namespace, video: Path, base: Path, adapter: Path, folder: Path,
             pair: Path | None = None) -> dict:
    out = folder / f"{video.stem}.json"
    out.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--child", str(video), "--base", str(base), "--adapter", str(adapter),
               "--json", str(out), "--cache", str(folder / "cache"), "--source", str(args.source)]
    if args.budget is not None:
        command += ["--budget", str(args.budget)]
    if pair is not None:
        command += ["--pair", str(pair)]
    limit = int(args.limit_gb * 2**30)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    done = subprocess.run(command, preexec_fn=cap, capture_output=True, text=True)
    if done.returncode != 0 or not out.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"outcome": f"child died (exit {done.returncode}): {tail[0][:80]}"}
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", default="1,2,5,10")
    parser.add_argument("--sizes", default="64x48,1920x1080")
    parser.add_argument("--source", type=Path, default=REPO, help="checkout whose ml_backend is measured")
    parser.add_argument("--limit-gb", type=float, default=16.0, help="RLIMIT_AS of each child")
    parser.add_argument("--budget", type=int, help="MDSVQA_MAX_VISUAL_TOKENS for the children (default: derived)")
    parser.add_argument("--keep", type=Path, help="keep the videos and the tiny model in this folder")
    parser.add_argument("--pair", nargs="?", const="", default=None,
                        help="score each video in one batch with a 5 s clip (the child gets the clip's path)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--adapter", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.source = args.source.resolve()
    if args.child:
        child(args)
        return

    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory(prefix="video-memory-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        base, adapter = folder / "tiny" / "base", folder / "tiny" / "adapter"
        if not base.exists():
            from ml_backend.model.tiny import write_tiny_model

            write_tiny_model(folder / "tiny")
        print(f"source: {args.source}   child RLIMIT_AS: {args.limit_gb:g} GiB   "
              f"budget: {args.budget if args.budget is not None else 'derived'}")
        header = ("| video | sampled frames | visual tokens | budget | outcome | RSS after load (MB) "
                  "| peak RSS (MB) | growth per token (KB) | time (s) |")
        print(header)
        print("| --- " * 9 + "|")
        for size in args.sizes.split(","):
            width, height = (int(x) for x in size.split("x"))
            fps = 25 if width * height <= 640 * 480 else 5
            clip = None
            if args.pair is not None:
                clip = folder / f"{width}x{height}_5s.mp4"
                if not clip.exists():
                    make_video(clip, 5, width, height, fps)
            for minutes in (float(m) for m in args.minutes.split(",")):
                video = folder / f"{width}x{height}_{minutes:g}min.mp4"
                if not video.exists():
                    make_video(video, minutes * 60, width, height, fps)
                row = run_case(args, video, base, adapter, folder, clip)
                name = f"{minutes:g} min {width}x{height} ({video.stat().st_size / 1e6:.1f} MB)"
                if clip is not None:
                    name += " + 5 s clip, one batch"
                if "tokens" not in row:
                    print(f"| {name} | | | | {row['outcome']} | | | | |", flush=True)
                    continue
                growth = (row["peak_mb"] - row["after_load_mb"]) * 1024 / row["tokens"]
                print(f"| {name} | {row['frames']} at {row['size']} | {row['tokens']:,} | "
                      f"{'none' if row['budget'] is None else format(row['budget'], ',')} | {row['outcome']}"
                      f"{_split_note(row.get('batch_split'))} | "
                      f"{row['after_load_mb']:.0f} | {row['peak_mb']:.0f} | {growth:.1f} | {row['seconds']:.1f} |",
                      flush=True)


if __name__ == "__main__":
    main()
