"""``mdsvqa features PATH... --out DIR``: per-video frame embeddings for the diversity term."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "features",
        help="Write DIR/<stem>_features.npz embeddings of video files or folders.",
        description="Embed the sampled frames of every video for selection. 'vision' uses the base model's "
        "own vision tower on the frames the scorer decodes (one embedding per two frames, normalised); "
        "'clip' uses open_clip (RN101 by default, each frame normalised). `mdsvqa score --features DIR` "
        "writes the vision features in the same pass as the scores.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH")
    parser.add_argument("--out", required=True, metavar="DIR", help="Folder for <stem>_features.npz files.")
    parser.add_argument("--extractor", choices=["vision", "clip"], default="vision")
    parser.add_argument("--base", help="Base model for the vision extractor (MDSVQA_BASE).")
    parser.add_argument("--adapter", help="Adapter loaded with the base (MDSVQA_ADAPTER); the tower is not adapted.")
    parser.add_argument("--device", help="auto, cpu, cuda (MDSVQA_DEVICE).")
    parser.add_argument("--batch-size", type=int, help="Videos per tower pass (MDSVQA_BATCH_SIZE).")
    parser.add_argument("--fps", type=float, help="Frames sampled per second (MDSVQA_VIDEO_FPS).")
    parser.add_argument("--clip-model", default="RN101", help="open_clip architecture (default RN101).")
    parser.add_argument("--clip-weights", default="openai", help="open_clip pretrained tag or local file.")
    parser.add_argument("--skip-existing", action="store_true", help="Keep feature files that already exist.")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from tqdm import tqdm

    from ..errors import MdsVqaError
    from selection.features import features_path
    from selection.features import save_features as write_features
    from ..prefetch import prefetched_batches
    from ..settings import VideoSettings, load_settings
    from ..video.decoding import decode_video, find_videos

    video = VideoSettings(**({"fps": args.fps} if args.fps else {}))
    settings = load_settings(base=args.base, adapter=args.adapter, device=args.device, batch_size=args.batch_size,
                             video=video)
    out = Path(args.out)
    videos, problems = find_videos(args.paths)
    failures = [f"{folder}: {reason}" for folder, reason in problems]
    todo = [p for p in videos if not (args.skip_existing and features_path(out, p).exists())]

    if args.extractor == "vision":
        from ..features.vision import VisionFeatureExtractor
        from ..model.loading import shared_model
        from ..scoring.scorer import prepare_video

        loaded = shared_model(settings)
        extractor = VisionFeatureExtractor(loaded)
        prepare = lambda path: prepare_video(path, settings, loaded)  # noqa: E731
        embed = extractor.extract
    else:
        from ..features.clip import ClipFeatureExtractor

        extractor = ClipFeatureExtractor(args.clip_model, args.clip_weights,
                                         "cuda" if settings.device.startswith("cuda") else "cpu")
        prepare = lambda path: decode_video(path, settings.video).frames  # noqa: E731
        embed = extractor.extract_frames

    written = 0
    bar = tqdm(total=len(todo), unit="video", disable=args.no_progress or not todo, file=sys.stderr)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="mdsvqa-decode") as pool:
        for batch in prefetched_batches(todo, prepare, settings.batch_size, pool):
            ready = []
            for path, future in batch:
                try:
                    ready.append((path, future.result()))
                except MdsVqaError as exc:
                    failures.append(str(exc))
                    bar.update(1)
            if ready:
                for (path, _), embedding in zip(ready, embed([item for _, item in ready])):
                    write_features(out, path, embedding)
                    written += 1
                    bar.update(1)
    bar.close()
    for failure in failures:
        print(f"failed: {failure}", file=sys.stderr)
    print(f"{written} feature files written to {out}, {len(failures)} failed ({extractor.name} extractor)",
          file=sys.stderr)
    return 1 if failures else 0
