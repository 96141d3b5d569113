"""``mdsvqa demo [--check]``: Label Studio + backend on loopback with a derived pool, scored and ordered."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="Run the whole loop locally: Label Studio, the backend, a scored and ordered pool.",
        description="Start Label Studio and the backend on 127.0.0.1 (offline; the tiny random model unless "
        "real checkpoints are configured or cached), create a project with the shared videos and a derived "
        "pool, score it, order the queue, print the URL, credentials and the top of the queue. Ctrl-C stops "
        "both services. --check verifies everything headless and exits.",
    )
    parser.add_argument("--workdir", default=".cache/demo", help="Where data, logs and the pool go.")
    parser.add_argument("--videos", help="Folder of source videos (default: ../shared/videos).")
    parser.add_argument("--port", type=int, help="Label Studio port (default: a free one).")
    parser.add_argument("--budget", type=int, default=8, help="Greedy picks at the head of the queue.")
    parser.add_argument("--show", type=int, default=10, help="Queue entries to print.")
    parser.add_argument("--check", action="store_true", help="Verify headless, stop everything, exit.")
    parser.add_argument("--reset", action="store_true", help="Delete the demo folder first (Label Studio's data "
                        "and user, scores, model versions, logs) and start clean.")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..demo.run import SHARED_VIDEOS, DemoOptions, run_demo

    return run_demo(DemoOptions(workdir=Path(args.workdir), videos=Path(args.videos) if args.videos else SHARED_VIDEOS,
                                port=args.port, budget=args.budget, check=args.check, show=args.show,
                                reset=args.reset))
