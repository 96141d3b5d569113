"""``mdsvqa features PATH... --out DIR``: per-video frame embeddings for the diversity term."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    import numpy as np


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "features",
        help="Write DIR/<stem>_features.npz embeddings of video files or folders.",
        description="Embed every video for selection, into DIR/<stem>_features.npz (array 'features', frames x "
        "dim, and 'extractor', what made them). 'clip' (default, the paper's): CLIP RN101 with OpenAI's weights "
        "on every frame, each row L2-normalised; 'siglip2': SigLIP2 giant on every frame, not normalised; "
        "'vision': the base model's own vision tower on the frames the scorer samples (one row per two frames; "
        "selection then needs an explicit lambda). Each video is decoded once. `mdsvqa score --features DIR` "
        "writes the same features in the scoring pass. Unset options come from MDSVQA_FEATURES_*.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH")
    parser.add_argument("--out", required=True, metavar="DIR", help="Folder for <stem>_features.npz files.")
    add_extractor_arguments(parser)
    parser.add_argument("--base", help="Base model for the vision extractor (MDSVQA_BASE).")
    parser.add_argument("--adapter", help="Adapter loaded with the base (MDSVQA_ADAPTER); the tower is not adapted.")
    parser.add_argument("--device", help="auto, cpu, cuda (MDSVQA_DEVICE); the extractors follow it unless "
                        "MDSVQA_FEATURES_DEVICE says otherwise.")
    parser.add_argument("--batch-size", type=int, help="Videos per tower pass, vision extractor (MDSVQA_BATCH_SIZE).")
    parser.add_argument("--fps", type=float, help="Frames sampled per second, vision extractor (MDSVQA_VIDEO_FPS).")
    parser.add_argument("--offline", action="store_true", default=None, help="Never contact the model hub.")
    parser.add_argument("--skip-existing", action="store_true", help="Keep feature files that already exist.")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(run=run)


def add_extractor_arguments(parser) -> None:
    """The extractor options shared by ``features`` and ``score --features``."""
    parser.add_argument("--extractor", choices=["clip", "siglip2", "vision"],
                        help="Feature extractor (MDSVQA_FEATURES_EXTRACTOR, default clip).")
    parser.add_argument("--clip-model", help="open_clip architecture (MDSVQA_FEATURES_CLIP_MODEL, default RN101).")
    parser.add_argument("--clip-pretrained", metavar="TAG",
                        help="open_clip weights tag (MDSVQA_FEATURES_CLIP_PRETRAINED, default openai).")
    parser.add_argument("--clip-checkpoint", metavar="FILE",
                        help="Local file with the CLIP weights, e.g. OpenAI's RN101.pt "
                        "(MDSVQA_FEATURES_CLIP_CHECKPOINT).")
    parser.add_argument("--clip-weights", help=argparse.SUPPRESS)  # older spelling: a tag, or a local file
    parser.add_argument("--siglip2-path", metavar="DIR",
                        help="Local folder with the SigLIP2 model (MDSVQA_FEATURES_SIGLIP2_PATH).")


def feature_overrides(args: argparse.Namespace) -> dict:
    """``load_settings(features=...)`` for the extractor options given (empty: the environment's)."""
    values = {"extractor": args.extractor, "clip_model": args.clip_model, "clip_pretrained": args.clip_pretrained,
              "clip_checkpoint": args.clip_checkpoint, "siglip2_path": args.siglip2_path}
    if args.clip_weights:  # older option: an existing file is a checkpoint of the default tag, else a tag
        from pathlib import Path

        key = "clip_checkpoint" if Path(args.clip_weights).is_file() else "clip_pretrained"
        values[key] = values[key] or args.clip_weights
    given = {key: value for key, value in values.items() if value is not None}
    if not given:
        return {}
    from ..settings import FeatureSettings

    return {"features": FeatureSettings(**given)}


def run(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from tqdm import tqdm

    from selection.features import features_path
    from selection.features import save_features as write_features

    from ..errors import MdsVqaError
    from ..features.identity import extractor_identity
    from ..prefetch import prefetched_batches
    from ..settings import VideoSettings, load_settings
    from ..video.decoding import find_videos

    video = VideoSettings(**({"fps": args.fps} if args.fps else {}))
    settings = load_settings(base=args.base, adapter=args.adapter, device=args.device, batch_size=args.batch_size,
                             offline=args.offline, video=video, **feature_overrides(args))
    out = Path(args.out)
    videos, problems = find_videos(args.paths)
    failures = [f"{folder}: {reason}" for folder, reason in problems]
    todo = [p for p in videos if not (args.skip_existing and features_path(out, p).exists())]

    prepare: Callable[[Path], Any]  # a decoded video, or (frame encoders) its features, embedded while decoding
    embed: Callable[[list[Any]], Sequence[np.ndarray]]
    if settings.features.extractor == "vision":
        from ..features.vision import VisionFeatureExtractor
        from ..model.loading import shared_model
        from ..scoring.scorer import prepare_video

        loaded = shared_model(settings)
        extractor = VisionFeatureExtractor(loaded)
        identity = extractor_identity(settings, loaded.spec)
        prepare = lambda path: prepare_video(path, settings, loaded)  # noqa: E731
        embed = extractor.extract
        batch_size = settings.batch_size
    else:
        from ..features.frames import embed_video_frames, load_frame_encoder

        encoder = load_frame_encoder(settings)  # missing weights: a clear error before any video is read
        identity = encoder.identity
        prepare = lambda path: embed_video_frames(path, settings, encoder)[1]  # noqa: E731 - one decode per video
        embed = lambda embedded: embedded  # noqa: E731 - embedded while decoding
        batch_size = 1

    written = 0
    bar = tqdm(total=len(todo), unit="video", disable=args.no_progress or not todo, file=sys.stderr)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="mdsvqa-decode") as pool:
        for batch in prefetched_batches(todo, prepare, batch_size, pool):
            ready = []
            for path, future in batch:
                try:
                    ready.append((path, future.result()))
                except MdsVqaError as exc:
                    failures.append(str(exc))
                    bar.update(1)
            if ready:
                for (path, _), embedding in zip(ready, embed([item for _, item in ready])):
                    write_features(out, path, embedding, extractor=identity)
                    written += 1
                    bar.update(1)
    bar.close()
    for failure in failures:
        print(f"failed: {failure}", file=sys.stderr)
    print(f"{written} feature files written to {out}, {len(failures)} failed (extractor {identity})",
          file=sys.stderr)
    return 1 if failures else 0
