"""``mdsvqa select``: order videos for labeling by greedy difficulty + diversity (MDS-VQA).

Reads the reference scores JSON and the per-video features folder, writes the picks as a
JSON list of names (the reference format), optionally the per-step details. Videos with
a failed score or unusable features are reported on stderr and left out.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..errors import MdsVqaError

DIFFICULTY_RANGE = (1.0, 5.0)


class SelectionInputError(MdsVqaError):
    """The inputs of ``mdsvqa select`` cannot give a correct ordering."""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "select",
        help="Order videos to label by greedy difficulty + diversity (MDS-VQA selection).",
        description="Pick up to K videos greedily: first the most difficult one, then each step the video "
        "maximising difficulty + lambda x mean Chamfer distance (of frame features) to everything "
        "selected so far, already-labeled videos included. Writes the picks in order as a JSON list "
        "of names. Videos with a null score or unusable features are reported and left out.",
    )
    parser.add_argument("--scores", required=True, metavar="FILE",
                        help='Scores JSON {"<name>": {"score": <1-5 or null>, ...}} (mdsvqa score output).')
    parser.add_argument("--features", required=True, metavar="DIR",
                        help="Folder of <stem>_features.npz files, array 'features' of shape (frames, dim) and "
                        "'extractor' (mdsvqa features / score --features); one extractor per run.")
    parser.add_argument("--budget", required=True, type=int, metavar="K",
                        help="Number of videos to pick (more than available: all of them, in order).")
    parser.add_argument("--lambda", dest="lam", type=float, default=None, metavar="L",
                        help="Weight of diversity against difficulty. Default: the paper's value for the features' "
                        "extractor, 0.25 for CLIP RN101 (openai), 0.075 for SigLIP2 giant; required for any other "
                        "features (the base model's vision tower, files that do not record their extractor).")
    parser.add_argument("--labeled", metavar="FILE",
                        help="JSON list of names already labeled: never picked, counted in the diversity term.")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu).")
    parser.add_argument("--store-dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"],
                        help="Precision of the stored features. float16/bfloat16 halve memory but are approximate "
                        "(exact greedy on rounded features); default float32.")
    parser.add_argument("--working-set", metavar="SIZE",
                        help="For pools whose features do not fit in memory: pack them into one temporary frames file "
                        "(in --pack-dir) and stream it, holding at most SIZE of frames at once (e.g. 2G, 512M; at "
                        "least ~70M for K = 64 and 300-frame 512-d videos). Same picks and values as without it.")
    parser.add_argument("--pack-dir", metavar="DIR",
                        help="With --working-set: where the temporary packed frames file goes (default: the system's "
                        "temporary folder); it takes the features' size in float32 (2 KB a 512-d frame).")
    parser.add_argument("--mos", metavar="LABELS.jsonl",
                        help='With --baseline: labels {"video", "mos"} for the reference\'s diagnostic, the quality '
                        "model's SRCC/PLCC on the whole labeled pool and on the picks (lower on the picks: they are "
                        "hard).")
    parser.add_argument("--baseline", metavar="SCORES.json",
                        help="The quality model f's scores of the pool (reference JSON) for the diagnostic.")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="Picks, a JSON list of names (written atomically).")
    parser.add_argument("--details", metavar="FILE",
                        help="Also write per step: name, objective, difficulty, mean_distance (JSON).")
    parser.set_defaults(run=run)


def _report(message: str) -> None:
    print(f"mdsvqa select: {message}", file=sys.stderr)


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SelectionInputError(f"--device {name}: CUDA is not available here; use --device cpu")
    return name


def run(args: argparse.Namespace) -> int:
    from selection.errors import SelectionError

    try:
        return _run(args)
    except SelectionError as exc:
        raise SelectionInputError(str(exc)) from exc


def parse_size(text: str) -> int:
    """Bytes from '2G', '512M', '1.5GiB', '64k' or a plain number of bytes."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    cleaned = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = units.get(cleaned[-1:], 1)
    try:
        value = float(cleaned[:-1] if scale > 1 else cleaned) * scale
    except ValueError:
        raise SelectionInputError(f"--working-set {text!r}: expected a size such as 2G, 512M or a number of bytes") \
            from None
    if not value > 0:
        raise SelectionInputError(f"--working-set {text!r}: must be positive")
    return int(value)


def _run(args: argparse.Namespace) -> int:
    import contextlib
    import tempfile

    with contextlib.ExitStack() as stack:
        pack = None
        if args.working_set is not None:
            working_set = parse_size(args.working_set)
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="mdsvqa-select-", dir=args.pack_dir))
            pack = (Path(folder) / "frames.npy", working_set)
        elif args.pack_dir is not None:
            raise SelectionInputError("--pack-dir goes with --working-set")
        return _select(args, pack)


def _select(args: argparse.Namespace, pack: tuple[Path, int] | None) -> int:
    import numpy as np

    from selection.features import UNRECORDED, LoadedFeatures, PackedFeatures, load_features, pack_features
    from selection.files import read_name_list, read_scores
    from selection.greedy import select_greedy
    from selection.lambdas import resolve_lambda

    from ..fileio import atomic_write_json

    if args.budget < 0:
        raise SelectionInputError(f"--budget must be >= 0, got {args.budget}")
    if bool(args.mos) != bool(args.baseline):
        raise SelectionInputError("the diagnostic needs both --mos and --baseline")
    device = _resolve_device(args.device)
    scores = read_scores(args.scores)
    labeled = read_name_list(args.labeled, "labeled list") if args.labeled else []
    labeled_set = set(labeled)

    left_out: dict[str, str] = {}
    for name, reason in scores.unusable.items():
        if name not in labeled_set:
            left_out[name] = reason
    candidates = [name for name in scores.scores if name not in labeled_set]
    outside = [name for name in candidates if not DIFFICULTY_RANGE[0] <= scores.scores[name] <= DIFFICULTY_RANGE[1]]
    if outside:
        shown = ", ".join(f"{name} ({scores.scores[name]:g})" for name in outside[:5])
        raise SelectionInputError(
            f"{len(outside)} difficulty score(s) outside [1, 5] in {args.scores}: {shown}"
            f"{' ...' if len(outside) > 5 else ''}. Difficulty is the raw 1-5 score; re-score these videos "
            "or remove them from the file.")

    features: LoadedFeatures | PackedFeatures
    if pack is None:
        features = load_features(args.features, candidates + labeled)
    else:  # one video in memory at a time, the frames into one file, streamed within the working set
        features = pack_features(args.features, candidates + labeled, pack[0])
    extractor = features.extractor()  # MixedExtractorsError when files of several extractors meet
    bad_labeled = [problem for problem in features.problems if problem.name in labeled_set]
    if bad_labeled:
        shown = "; ".join(str(problem) for problem in bad_labeled[:5])
        raise SelectionInputError(
            f"{len(bad_labeled)} labeled video(s) have no usable features, so the diversity term cannot be "
            f"computed: {shown}. Extract their features or drop them from --labeled.")
    for problem in features.problems:
        left_out[problem.name] = f"{problem.reason} ({problem.path})"
    for name, reason in left_out.items():
        _report(f"left out {name}: {reason}")

    index = {name: i for i, name in enumerate(features.names)}
    if not features.names:
        raise SelectionInputError("no video has both a usable score and usable features: nothing to select from")
    lam, lam_source = resolve_lambda(args.lam, extractor)
    if extractor is None:
        _report(f"features: extractor {UNRECORDED}; lambda {lam:g} as given")
    else:
        _report(f"features: {extractor}, lambda {lam:g} ({lam_source})")
    difficulty = np.array([scores.scores.get(name, np.nan) if name not in labeled_set else np.nan
                           for name in features.names], dtype=np.float64)
    initial = [index[name] for name in labeled]
    n_candidates = len(features.names) - len(initial)

    started = time.perf_counter()
    if isinstance(features, LoadedFeatures):
        result = select_greedy(difficulty, features.frames, args.budget, lam, initial, device=device,
                               store_dtype=args.store_dtype, difficulty_range=DIFFICULTY_RANGE)
    else:
        assert pack is not None and features.path is not None  # names were packed into it
        result = select_greedy(difficulty, features.path, args.budget, lam, initial, offsets=features.offsets,
                               device=device, store_dtype=args.store_dtype, difficulty_range=DIFFICULTY_RANGE,
                               working_set_bytes=pack[1])
        _report(f"streamed {result.stats['frames_read']} frames from {features.path}, at most "
                f"{result.stats['working_set_peak_bytes'] / 2**20:.1f} MiB of them held at once "
                f"(working set {pack[1] / 2**20:.1f} MiB)")
    seconds = time.perf_counter() - started
    picks = [features.names[i] for i in result.picks]

    atomic_write_json(args.out, picks)
    if args.details:
        atomic_write_json(args.details, {
            "lambda": lam,
            "lambda_source": lam_source,
            "extractor": extractor,
            "budget": args.budget,
            "labeled": len(initial),
            "candidates": n_candidates,
            "left_out": left_out,
            "steps": [{"rank": rank, "name": features.names[step.index], "objective": step.objective,
                       "difficulty": step.difficulty, "mean_distance": step.mean_distance}
                      for rank, step in enumerate(result.steps(), start=1)],
        })
    if result.budget_clipped:
        _report(f"budget {args.budget} exceeds the {n_candidates} candidates: all of them are ordered")
    _report(f"picked {len(picks)} of {n_candidates} candidates ({len(initial)} labeled, {len(left_out)} left out) "
            f"in {seconds:.2f} s -> {args.out}")
    if args.mos and args.baseline:
        from ..training.reporting import diagnostic_lines

        for line in diagnostic_lines(args.baseline, args.mos, picks):
            print(line)
    return 0

