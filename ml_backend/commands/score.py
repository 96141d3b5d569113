"""``mdsvqa score PATH... --out FILE``: difficulty of every video into the reference JSON."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path



def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "score",
        help="Score the difficulty of video files or folders into a JSON file.",
        description="Predict how hard each video is for the quality model (1-5) with the failure "
        "predictor, and write {name: {reasoning, score}} to FILE. Failed videos get score null and "
        "an error; the exit status is 1 when any failed. Unset options come from MDSVQA_* variables.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="Video files and/or folders (searched recursively).")
    parser.add_argument("--out", required=True, metavar="FILE", help="Scores JSON to write (atomically).")
    parser.add_argument("--base", help="Base model: hub id or local folder (MDSVQA_BASE).")
    parser.add_argument("--adapter", help="Failure-predictor adapter: hub id or folder (MDSVQA_ADAPTER).")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N (MDSVQA_DEVICE).")
    parser.add_argument("--batch-size", type=int, help="Videos per forward pass (MDSVQA_BATCH_SIZE).")
    parser.add_argument("--decoding", choices=["constrained", "greedy", "sample"], help="MDSVQA_DECODING.")
    parser.add_argument("--num-samples", type=int, help="Sampled answers averaged per video (with --decoding sample).")
    parser.add_argument("--offline", action="store_true", default=None, help="Never contact the model hub.")
    parser.add_argument("--no-cache", action="store_true", help="Neither read nor write the score cache.")
    parser.add_argument("--resume", action="store_true",
                        help="Keep the scores already in FILE and score only the rest (failed ones are retried).")
    parser.add_argument("--features", metavar="DIR",
                        help="Also write selection features (DIR/<stem>_features.npz) from the same decode: CLIP "
                        "RN101 on every frame by default (see `mdsvqa features --help`).")
    from .features import add_extractor_arguments

    add_extractor_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="No progress bar.")
    from ..scale import add_ray_arguments

    add_ray_arguments(parser)
    from ..engines import add_engine_argument

    add_engine_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..model.loading import TINY_WARNING
    from ..scoring import DifficultyScorer
    from ..scoring.results import read_scores, result_entry, valid_score, write_scores
    from ..settings import load_settings
    from ..video.decoding import find_videos
    from .features import feature_overrides

    settings = load_settings(base=args.base, adapter=args.adapter, device=args.device, batch_size=args.batch_size,
                             decoding=args.decoding, num_samples=args.num_samples, offline=args.offline,
                             use_cache=False if args.no_cache else None, ray_address=args.ray_address,
                             engine=args.engine, **feature_overrides(args))
    if settings.ray_address and args.features:
        from ..errors import ConfigurationError

        raise ConfigurationError("--features does not run on Ray yet: score with --ray, then run `mdsvqa features`")
    videos, listing_problems = find_videos(args.paths)

    scores: dict[str, dict] = {}
    if args.resume:
        try:
            scores = read_scores(args.out)
        except Exception as exc:
            if "no such scores file" not in str(exc):
                raise
    done = {name for name, entry in scores.items() if valid_score(entry) is not None}

    for folder, reason in listing_problems:
        scores[str(folder)] = {"reasoning": "N/A", "score": None, "error": f"{folder}: {reason}"}
    todo: list[Path] = []
    seen: dict[str, Path] = {}
    for path in videos:
        if path.name in seen:
            scores[str(path)] = {"reasoning": "N/A", "score": None,
                                 "error": f"{path}: duplicate file name, already scored {seen[path.name]}; rename it"}
            continue
        seen[path.name] = path
        if path.name not in done:
            todo.append(path)

    if settings.ray_address:  # the same loop below, the model work on the cluster (ml_backend/scale)
        from ..scale import ray_options
        from ..scale.ray_pool import RayScorer

        scorer: DifficultyScorer | RayScorer = RayScorer.start(settings, settings.ray_address, **ray_options(args))
    else:
        scorer = DifficultyScorer.from_settings(settings)
    if args.features and isinstance(scorer, DifficultyScorer):
        from selection.features import save_features as write_features

        from ..features.identity import extractor_identity

        if settings.features.extractor != "vision":
            from ..features.frames import load_frame_encoder

            load_frame_encoder(settings)  # missing weights: a clear error now, not after the scoring
        identity = extractor_identity(settings, scorer.spec)
        scorer.with_features = True  # each result carries its features; written below
    if scorer.is_tiny:
        print(f"WARNING: {TINY_WARNING}", file=sys.stderr)
    last_write = time.monotonic()
    bar = tqdm(total=len(todo), unit="video", disable=args.no_progress or not todo, file=sys.stderr)
    try:
        for result in scorer.score_paths(todo):
            scores[result.name] = result_entry(result, tiny=scorer.is_tiny)
            if args.features and result.features is not None:
                write_features(args.features, result.path, result.features, extractor=identity)
            if not result.ok:
                bar.write(f"failed: {result.error}", file=sys.stderr)
            bar.update(1)
            if time.monotonic() - last_write > 10:  # keep progress on disk for --resume after a crash
                write_scores(args.out, scores)
                last_write = time.monotonic()
        if args.features:
            _complete_features(scorer, [p for p in videos if valid_score(scores.get(p.name, {})) is not None],
                               args.features, identity)
    finally:
        bar.close()
        write_scores(args.out, scores)
        scorer.close()

    # The exit status speaks of this run's request: old failures kept in a resumed file do not count.
    requested = [str(folder) for folder, _ in listing_problems] + \
        [path.name if seen.get(path.name) == path else str(path) for path in videos]
    total_ok = sum(1 for name in requested if valid_score(scores.get(name, {})) is not None)
    failed = len(requested) - total_ok
    kept = len(scores) - len(set(requested) & set(scores))
    print(f"{total_ok} scored, {failed} failed -> {args.out} (model {scorer.model_version})"
          + (f"; {kept} other entr{'y' if kept == 1 else 'ies'} kept from the file" if kept else ""), file=sys.stderr)
    if scorer.is_tiny:
        print(f"WARNING: {TINY_WARNING}", file=sys.stderr)
    return 1 if failed else 0


def _complete_features(scorer, paths, directory, identity: str) -> None:
    """Cache hits never reach the model: embed those whose feature file is missing (one decode each)."""
    from selection.features import features_path
    from selection.features import save_features as write_features

    missing = [p for p in paths if not features_path(directory, p).exists()]
    if not missing:
        return
    if scorer.settings.features.extractor != "vision":
        from ..errors import MdsVqaError
        from ..features.frames import embed_video_frames

        for path in missing:
            try:
                _decoded, embedding = embed_video_frames(path, scorer.settings)
            except MdsVqaError as exc:
                print(f"no features: {exc}", file=sys.stderr)
                continue
            write_features(directory, path, embedding, extractor=identity)
        return
    from ..features.vision import VisionFeatureExtractor
    from ..scoring.scorer import prepare_video

    extractor = VisionFeatureExtractor(scorer.loaded)
    for start in range(0, len(missing), scorer.settings.batch_size):
        chunk = missing[start:start + scorer.settings.batch_size]
        prepared = [prepare_video(p, scorer.settings, scorer.loaded) for p in chunk]
        for path, embedding in zip(chunk, extractor.extract(prepared)):
            write_features(directory, path, embedding, extractor=identity)
