"""``mdsvqa``: one entry point, one module per subcommand under ``ml_backend/commands``.

Command modules import only argparse-level code at the top; torch, transformers and
friends are imported inside each command's ``run`` so that ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__

# (subcommand, module under ml_backend.commands). Each module has add_parser(subparsers).
COMMANDS: list[tuple[str, str]] = [
    ("score", "score"),
    ("features", "features"),
    ("inputs", "inputs"),
    ("select", "select"),
    ("evaluate", "evaluate"),
    ("report", "report"),
    ("demo", "demo"),
    ("tiny-model", "tiny_model"),
    ("export", "export"),
    ("serve", "serve"),
    ("score-project", "score_project"),
    ("prioritize", "prioritize"),
    ("train", "train"),
    ("versions", "versions"),
    ("activate", "activate"),
    ("jobs", "jobs"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mdsvqa",
        description="MDS-VQA for Label Studio: score video difficulty, order the labeling queue, fine-tune.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="More log output (-vv for debug).")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for _name, module in COMMANDS:
        importlib.import_module(f"ml_backend.commands.{module}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from .errors import MdsVqaError

    try:
        return int(args.run(args) or 0)
    except MdsVqaError as exc:
        print(f"mdsvqa {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mdsvqa {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
