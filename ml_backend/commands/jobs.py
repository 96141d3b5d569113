"""``mdsvqa jobs``: training jobs of a model directory: state, progress, result, log; cancel."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "jobs",
        help="Show training jobs (latest by default): state, progress, improvement, log; --cancel stops one.",
        description="Training jobs of MODEL_DIR, started by `mdsvqa train --background` or by Label Studio's "
        "Start Training. A job killed without a word (kill -9, out of memory) is shown as failed (stale).",
    )
    parser.add_argument("job", nargs="?", metavar="JOB_ID", help="A job id (default: the latest).")
    parser.add_argument("--model-dir", help="Version store and jobs (MDSVQA_MODEL_DIR).")
    parser.add_argument("--all", action="store_true", help="Every job, oldest first.")
    parser.add_argument("--log", nargs="?", type=int, const=50, metavar="N",
                        help="Also print the last N lines of the job's log (default 50).")
    parser.add_argument("--json", action="store_true", help="Machine-readable output.")
    parser.add_argument("--cancel", action="store_true", help="Stop the running job (it records 'cancelled').")
    parser.set_defaults(run=run)


def _describe(status) -> list[str]:
    lines = [f"{status.job_id}  {status.state}{' (stale)' if status.stale else ''}  {status.progress:.0%}  "
             f"{status.message}"]
    lines.append(f"    started {status.started or '-'}  finished {status.finished or '-'}  pid {status.pid or '-'}")
    if status.error:
        lines.append(f"    error: {status.error}")
    for run in (status.result or {}).get("runs", []):
        lines.append(f"    {run.get('summary')}")
    if status.result.get("version_id") and not status.result.get("runs"):
        lines.append(f"    version: {status.result['version_id']}")
    lines.append(f"    log: {status.log_path}")
    return lines


def run(args: argparse.Namespace) -> int:
    import json

    from ..settings import load_settings
    from ..training.jobs import JobManager, tail_lines

    jobs = JobManager(args.model_dir or load_settings().model_dir)
    if args.cancel:
        status = jobs.cancel(args.job)
        print(f"cancelling {status.job_id} (pid {status.pid})")
        return 0
    statuses = jobs.list() if args.all else [s for s in [jobs.status(args.job)] if s is not None]
    if args.json:
        body = [s.to_json() | ({"log": tail_lines(s.log_path, args.log)} if args.log else {}) for s in statuses]
        print(json.dumps(body if args.all else (body[0] if body else None), indent=2))
        return 0
    if not statuses:
        print(f"no training jobs in {jobs.jobs_dir}")
        return 0
    for status in statuses:
        print("\n".join(_describe(status)))
        if args.log:
            print("\n".join("    | " + line for line in tail_lines(status.log_path, args.log)))
    return 0
