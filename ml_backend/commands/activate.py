"""``mdsvqa activate``: make a version active (rollback = activate an older one); servers follow it."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "activate",
        help="Make a trained version active (or roll back); a running backend switches to it by itself.",
        description="Point the active version of a kind at VERSION_ID. Any complete version can be activated, "
        "older ones included: that is the rollback. 'stock' (with --kind) returns to the configured model, "
        "'previous' (with --kind) to the version active before the current one. A running `mdsvqa serve` on "
        "the same MODEL_DIR notices within MDSVQA_VERSION_POLL_S seconds, loads it without a restart and keeps "
        "Label Studio's model_version equal to it.",
    )
    parser.add_argument("version", metavar="VERSION_ID", help="A version id, 'stock' or 'previous'.")
    parser.add_argument("--model-dir", help="Version store (MDSVQA_MODEL_DIR).")
    parser.add_argument("--kind", choices=["quality", "difficulty"],
                        help="Needed with 'stock' and 'previous'; checked against the version otherwise.")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import VersionError
    from ..settings import load_settings
    from ..training.versions import VersionStore

    store = VersionStore(args.model_dir or load_settings().model_dir)
    if args.version in ("stock", "previous"):
        if args.kind is None:
            raise VersionError(f"'{args.version}' needs --kind quality or --kind difficulty")
        pointer = store.rollback(args.kind) if args.version == "previous" else store.activate(None, kind=args.kind)
    else:
        pointer = store.activate(args.version, kind=args.kind)
    print(f"active {pointer.kind}: {pointer.version or 'none (stock model)'} (was {pointer.previous or 'stock'})")
    return 0
