"""``mdsvqa tiny-model DIR``: write a random tiny Qwen2.5-VL base and adapter for tests and demos."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "tiny-model",
        help="Write a tiny random Qwen2.5-VL (DIR/base) and LoRA adapter (DIR/adapter).",
        description="Write a tiny randomly initialised Qwen2.5-VL with processor to DIR/base and a LoRA "
        "adapter with the published adapter's rank, alpha and target modules to DIR/adapter. "
        "It loads through the same code as the real checkpoints; its scores are meaningless.",
    )
    parser.add_argument("directory", metavar="DIR")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random weights (default 0).")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..model.tiny import write_tiny_model

    base, adapter = write_tiny_model(args.directory, seed=args.seed)
    print(f"base:    {base}\nadapter: {adapter}")
    print("NOTE: random weights - anything scored with this model is meaningless.")
    return 0
