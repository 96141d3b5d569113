"""``mdsvqa report``: one self-contained HTML page about a scored pool and its selection."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="Write an HTML report: difficulty histogram, embedding map with picks, objective terms, versions.",
        description="Summarise a scored pool in one self-contained HTML file: a Label Studio project "
        "(--project: its predictions, the backend's features, the selection it computes, read-only), or "
        "files (--scores with --features; the selection from `mdsvqa select --details`, or --budget).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--project", type=int, metavar="P", help="Label Studio project id (read-only).")
    source.add_argument("--scores", metavar="FILE", help="Scores JSON (reference format).")
    parser.add_argument("--url", help="Label Studio URL for --project (LABEL_STUDIO_URL).")
    parser.add_argument("--token", help="Label Studio token for --project (LABEL_STUDIO_API_KEY; prefer the env).")
    parser.add_argument("--base", help="Base model whose features the backend keeps (MDSVQA_BASE).")
    parser.add_argument("--adapter", help="The backend's adapter (MDSVQA_ADAPTER).")
    parser.add_argument("--cache-dir", help="The backend's cache folder with its features (MDSVQA_CACHE_DIR).")
    parser.add_argument("--features", metavar="DIR", help="Features folder (<stem>_features.npz) for the map.")
    parser.add_argument("--selection", metavar="FILE", help="Details JSON written by `mdsvqa select --details`.")
    parser.add_argument("--budget", type=int, help="Select this many videos here (needs --features).")
    parser.add_argument("--lambda", dest="lam", type=float, help="Diversity weight (MDSVQA_PRIORITY_DIVERSITY_LAMBDA; "
                        "default from the features' extractor: 0.25 CLIP RN101, 0.075 SigLIP2; required otherwise).")
    parser.add_argument("--extractor", choices=["clip", "siglip2", "vision"],
                        help="With --project: which of the backend's kept features (MDSVQA_FEATURES_EXTRACTOR).")
    parser.add_argument("--labeled", metavar="FILE", help="JSON list of names already labeled.")
    parser.add_argument("--model-dir", metavar="DIR", help="Model directory: adds SRCC/PLCC of each version.")
    parser.add_argument("--mos", metavar="LABELS.jsonl", help="With --baseline (and --scores): the reference's "
                        "diagnostic, the quality model's SRCC/PLCC on the labeled pool and on the picks.")
    parser.add_argument("--baseline", metavar="SCORES.json", help="The quality model f's scores of the pool.")
    parser.add_argument("--title", default="Video pool report")
    parser.add_argument("--out", required=True, metavar="FILE", help="HTML file to write.")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from selection.errors import SelectionError

    from ..errors import MdsVqaError

    try:
        return _run(args)
    except SelectionError as exc:  # duplicate stems, bad difficulty values, ...: a message, not a traceback
        raise MdsVqaError(str(exc)) from exc


def _run(args: argparse.Namespace) -> int:
    from ..errors import MdsVqaError
    from ..fileio import atomic_write_bytes
    from ..report.html import render

    if bool(args.mos) != bool(args.baseline):
        raise MdsVqaError("the diagnostic needs both --mos and --baseline")
    data = _project_data(args) if args.project is not None else _file_data(args)
    if args.mos:
        from ..training.reporting import diagnostic_lines

        data.notes.extend(diagnostic_lines(args.baseline, args.mos, [pick.name for pick in data.picks]))
    if args.model_dir:
        from ..report.versions import version_rows

        data.versions = version_rows(args.model_dir)
    atomic_write_bytes(args.out, render(data).encode())
    print(f"report: {len(data.difficulty)} videos, {len(data.picks)} picks -> {args.out}", file=sys.stderr)
    return 0


def _project_data(args: argparse.Namespace):
    """A project as the backend sees it: predictions, kept features, and the order it would compute."""
    from ..prioritize.run import prioritize_project
    from ..report.project import project_report_data
    from ..settings import load_settings
    from .prioritize import open_project, with_extractor

    settings = with_extractor(load_settings(label_studio_url=args.url, label_studio_api_key=args.token,
                                            base=args.base, adapter=args.adapter, cache_dir=args.cache_dir),
                              args.extractor)
    lam = args.lam if args.lam is not None else settings.priority.diversity_lambda
    budget = args.budget if args.budget is not None else settings.priority.budget
    client, features, resolver, device = open_project(settings, args.project, extract=False)
    try:
        summary = prioritize_project(client, args.project, features=features, budget=budget,
                                     budget_fraction=settings.priority.budget_fraction, lam=lam, device=device,
                                     write=False, keep_frames=True)
    finally:
        resolver.close()

    title = args.title if args.title != "Video pool report" else f"Project {args.project}"
    return project_report_data(summary, title)


def _file_data(args: argparse.Namespace):
    import json
    from pathlib import Path

    from ..errors import MdsVqaError
    from ..report.data import PickRow, ReportData
    from ..scoring.results import read_scores, valid_score

    scores = read_scores(args.scores)
    valid = {n: valid_score(e) for n, e in scores.items()}
    difficulty = {n: score for n, score in valid.items() if score is not None}
    failed = {n: e.get("error", "no score") for n, e in scores.items() if valid[n] is None}
    labeled = json.loads(Path(args.labeled).read_text()) if args.labeled else []
    data = ReportData(title=args.title, difficulty=difficulty, failed=failed, embeddings={}, labeled=labeled)
    if any("warning" in e for e in scores.values()):
        data.notes.append("These scores come from the tiny random test model: they are meaningless.")

    if args.features:
        from selection.features import load_features

        features = load_features(args.features, sorted(difficulty))
        extractor = features.extractor()  # one extractor per report (MixedExtractorsError otherwise)
        data.embeddings = dict(zip(features.names, features.frames))
        data.notes.append(f"features: {extractor or 'extractor not recorded (older files)'}")
        for problem in features.problems:
            print(f"report: no features for {problem}", file=sys.stderr)

    if args.selection:
        details = json.loads(Path(args.selection).read_text())
        data.lam = details.get("lambda")
        data.picks = [PickRow(s["rank"], s["name"], s["objective"], s["difficulty"], s["mean_distance"])
                      for s in details.get("steps", [])]
    elif args.budget:
        if not data.embeddings:
            raise MdsVqaError("--budget needs --features with at least one usable features file")
        import numpy as np

        from selection import select_greedy
        from selection.lambdas import resolve_lambda

        names = sorted(data.embeddings)
        initial = [names.index(n) for n in labeled if n in data.embeddings]
        lam, _source = resolve_lambda(args.lam, extractor)
        result = select_greedy(np.array([difficulty[n] for n in names]), [data.embeddings[n] for n in names],
                               args.budget, lam, initial)
        data.lam = lam
        data.picks = [PickRow(rank, names[s.index], s.objective, s.difficulty, s.mean_distance)
                      for rank, s in enumerate(result.steps(), start=1)]

    return data
