"""``mdsvqa train``: fine-tune the quality model or the failure predictor on labels, publish a version."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="Fine-tune f (quality, GRPO) or g (difficulty, REINFORCE) on labelled videos; publish a version.",
        description="Train a LoRA adapter on a JSONL label file ({\"video\": path, \"mos\": x} per line), "
        "evaluate it on a held-out split before and after, write it to MODEL_DIR/versions/<id> and print "
        "the id. Bad rows and unreadable videos are skipped and reported; too few labels are refused.",
    )
    parser.add_argument("--labels", required=True, metavar="FILE.jsonl", help="Target-domain labels.")
    parser.add_argument("--source-labels", metavar="FILE.jsonl",
                        help="Optional second label set trained alongside (own batches, not evaluated).")
    parser.add_argument("--model-dir", required=True, metavar="DIR", help="Version store and job state.")
    parser.add_argument("--objective", choices=["quality", "difficulty"], help="Default: MDSVQA_TRAIN_OBJECTIVE.")
    parser.add_argument("--base", help="Base model f (hub id or folder). Default: MDSVQA_BASE.")
    parser.add_argument("--adapter", default="stock",
                        help="Start from: 'stock' (fresh LoRA for quality, MDSVQA_ADAPTER for difficulty), "
                        "'active', a version id, or an adapter folder/hub id. Default: stock.")
    parser.add_argument("--max-steps", type=int, help="Stop after N optimizer steps.")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--group-size", type=int, help="Sampled answers per video (GRPO G).")
    parser.add_argument("--videos-per-step", type=int,
                        help="Videos per optimizer step (MDSVQA_TRAIN_VIDEOS_PER_STEP; default 16 for f, 64 for g).")
    parser.add_argument("--videos-compared", type=int,
                        help="Videos per micro-batch, compared by the rewards (MDSVQA_TRAIN_VIDEOS_COMPARED; "
                        "default 2 for f, 8 for g).")
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--held-out-fraction", type=float)
    parser.add_argument("--seed", type=int, help="Split and rollout seed.")
    parser.add_argument("--mos-range", type=float, nargs=2, metavar=("LO", "HI"),
                        help="Nominal MOS scale of the labels (default: their min and max).")
    parser.add_argument("--activate", choices=["never", "always", "if-better", "if-not-worse"],
                        default="if-better",
                        help="Make the new version active: never, always, if held-out SRCC improved (default), "
                        "or if it did not get worse.")
    parser.add_argument("--background", action="store_true",
                        help="Start a training job process and print its id instead of training here.")
    parser.add_argument("--device")
    parser.add_argument("--offline", action="store_true", default=None)
    parser.set_defaults(run=run)


def _overrides(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    training = {
        "max_steps": args.max_steps, "epochs": args.epochs, "learning_rate": args.learning_rate,
        "group_size": args.group_size, "videos_per_step": args.videos_per_step,
        "videos_compared": args.videos_compared,
        "max_new_tokens": args.max_new_tokens, "held_out_fraction": args.held_out_fraction,
        "split_seed": args.seed,
    }
    overrides = {"base": args.base, "device": args.device, "offline": args.offline}
    return {k: v for k, v in overrides.items() if v is not None}, {k: v for k, v in training.items() if v is not None}


def run(args: argparse.Namespace) -> int:
    import json

    top, training = _overrides(args)
    if args.background:
        from ..training.jobs import JobManager

        status = JobManager(args.model_dir).start_training(
            args.labels, objective=args.objective, adapter=args.adapter, source_labels=args.source_labels,
            mos_range=args.mos_range, activate=args.activate, settings=top, training=training)
        print(f"job: {status.job_id}\nlog: {status.log_path}")
        return 0

    from ..training.pipeline import make_settings, run_training

    settings = make_settings(top, training)
    outcome = run_training(args.labels, args.model_dir, settings=settings, objective=args.objective,
                           adapter=args.adapter, mos_range=tuple(args.mos_range) if args.mos_range else None,
                           source_labels=args.source_labels, activate=args.activate,
                           progress=lambda fraction, message: print(f"[{fraction:4.0%}] {message}", flush=True))
    for problem in outcome.skipped_labels:
        print(f"skipped {problem}")
    print(json.dumps({"before": outcome.metrics_before, "after": outcome.metrics_after}, indent=None))
    print(f"version: {outcome.version_id}{' (active)' if outcome.activated else ''}")
    return 0
