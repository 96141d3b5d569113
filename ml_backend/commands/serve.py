"""``mdsvqa serve``: the Label Studio ML backend (waitress: one process, request threads)."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="Run the Label Studio ML backend (one process, request threads).",
        description="Serve difficulty predictions to Label Studio. Every option can also be set from the "
        "environment (MDSVQA_BASE, MDSVQA_ADAPTER, MDSVQA_HOST, MDSVQA_PORT, MDSVQA_MODEL_DIR, ...); "
        "options given here win. See docs/backend.md.",
    )
    parser.add_argument("--base", help="Base model: hub id or directory (MDSVQA_BASE).")
    parser.add_argument("--adapter", help="Failure-predictor adapter: hub id or directory (MDSVQA_ADAPTER).")
    parser.add_argument("--host", help="Interface to listen on (MDSVQA_HOST, default 127.0.0.1).")
    parser.add_argument("--port", type=int, help="Port (MDSVQA_PORT, default 9090).")
    parser.add_argument("--model-dir", help="Versions, jobs and backend state (MDSVQA_MODEL_DIR).")
    parser.add_argument("--cache-dir", help="Score caches and downloads (MDSVQA_CACHE_DIR).")
    parser.add_argument("--threads", type=int, help="Request threads (MDSVQA_THREADS, default 8).")
    parser.add_argument("--predict-deadline", type=float, dest="predict_deadline_s",
                        help="Seconds /predict may take before the rest is pushed later (MDSVQA_PREDICT_DEADLINE_S).")
    parser.add_argument("--device", help="'auto', 'cpu', 'cuda' or 'cuda:N' (MDSVQA_DEVICE).")
    from ..engines import add_engine_argument

    add_engine_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..server.http_front import serve
    from ..settings import load_settings

    settings = load_settings(base=args.base, adapter=args.adapter, host=args.host, port=args.port,
                             model_dir=args.model_dir, cache_dir=args.cache_dir, threads=args.threads,
                             predict_deadline_s=args.predict_deadline_s, device=args.device,
                             engine=args.engine)
    level = {0: "info", 1: "info", 2: "debug"}.get(args.verbose, "debug")
    serve(settings, log_level=level)
    return 0
