"""``mdsvqa report``: one self-contained HTML page about a scored pool and its selection."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="Write an HTML report: difficulty histogram, embedding map with picks, objective terms, versions.",
        description="Summarise a scored pool in one self-contained HTML file. Give the selection as the "
        "details file of `mdsvqa select --details`, or --budget to select here.",
    )
    parser.add_argument("--scores", required=True, metavar="FILE", help="Scores JSON (reference format).")
    parser.add_argument("--features", metavar="DIR", help="Features folder (<stem>_features.npz) for the map.")
    parser.add_argument("--selection", metavar="FILE", help="Details JSON written by `mdsvqa select --details`.")
    parser.add_argument("--budget", type=int, help="Select this many videos here (needs --features).")
    parser.add_argument("--lambda", dest="lam", type=float, default=0.25, help="Diversity weight (default 0.25).")
    parser.add_argument("--labeled", metavar="FILE", help="JSON list of names already labeled.")
    parser.add_argument("--model-dir", metavar="DIR", help="Model directory: adds SRCC/PLCC of each version.")
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
    import json
    from pathlib import Path

    from ..errors import MdsVqaError
    from ..fileio import atomic_write_bytes
    from ..report.data import PickRow, ReportData
    from ..report.html import render
    from ..scoring.results import read_scores, valid_score

    scores = read_scores(args.scores)
    difficulty = {n: valid_score(e) for n, e in scores.items() if valid_score(e) is not None}
    failed = {n: e.get("error", "no score") for n, e in scores.items() if valid_score(e) is None}
    labeled = json.loads(Path(args.labeled).read_text()) if args.labeled else []
    data = ReportData(title=args.title, difficulty=difficulty, failed=failed, embeddings={}, labeled=labeled)
    if any("warning" in e for e in scores.values()):
        data.notes.append("These scores come from the tiny random test model: they are meaningless.")

    if args.features:
        from selection.features import load_features

        features = load_features(args.features, sorted(difficulty))
        data.embeddings = dict(zip(features.names, features.frames))
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

        names = sorted(data.embeddings)
        initial = [names.index(n) for n in labeled if n in data.embeddings]
        result = select_greedy(np.array([difficulty[n] for n in names]), [data.embeddings[n] for n in names],
                               args.budget, args.lam, initial)
        data.lam = args.lam
        data.picks = [PickRow(rank, names[s.index], s.objective, s.difficulty, s.mean_distance)
                      for rank, s in enumerate(result.steps(), start=1)]

    if args.model_dir:
        from ..report.versions import version_rows

        data.versions = version_rows(args.model_dir)

    atomic_write_bytes(args.out, render(data).encode())
    print(f"report: {len(difficulty)} videos, {len(data.picks)} picks -> {args.out}", file=sys.stderr)
    return 0
