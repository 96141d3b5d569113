"""Entry point of a job process: ``python -m ml_backend.training.run --job-dir D --lock-fd N``.

Started only by :meth:`ml_backend.training.jobs.JobManager.start`, which hands over the
job lock as descriptor N. This process keeps that descriptor open until it exits (so
the lock dies with it), records running/succeeded/failed/cancelled in ``status.json``,
and calls the requested target with a :class:`JobContext` for progress reports.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib
import logging
import os
import signal
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import _files
from .jobs import JobStatus, _now

log = logging.getLogger("ml_backend.training.run")


class JobCancelled(BaseException):
    """Raised in the job process on SIGTERM so the target unwinds and the status says cancelled."""


class JobContext:
    """Handed to a job target: where to write, and how to report progress."""

    def __init__(self, job_dir: Path, status: JobStatus) -> None:
        self.job_dir = job_dir
        self._status = status
        self._last_write = 0.0

    @property
    def job_id(self) -> str:
        return self._status.job_id

    def progress(self, fraction: float, message: str = "", *, force: bool = False) -> None:
        """Record progress in [0, 1]; writes at most twice a second unless ``force``."""
        self._status = replace(self._status, progress=max(0.0, min(1.0, float(fraction))), message=message)
        now = time.monotonic()
        if force or now - self._last_write >= 0.5:
            self._last_write = now
            _write(self.job_dir, self._status)

    @property
    def status(self) -> JobStatus:
        return self._status


def _write(job_dir: Path, status: JobStatus) -> None:
    _files.atomic_write_json(job_dir / "status.json", status.to_json())


def _load_target(spec: str):
    module_name, _, func_name = spec.partition(":")
    return getattr(importlib.import_module(module_name), func_name)


def _on_sigterm(signum, frame) -> None:
    raise JobCancelled()


def _release(lock_fd: int) -> None:
    """Drop the job lock right after the final status is written, not at the end of interpreter teardown
    (seconds with torch loaded): a job that says "succeeded" must not still block the next one."""
    with contextlib.suppress(OSError):
        os.close(lock_fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml_backend.training.run")
    parser.add_argument("--job-dir", required=True, type=Path)
    parser.add_argument("--lock-fd", required=True, type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout)

    # The inherited descriptor shares the parent's open file description, which holds the
    # flock; re-locking it is a no-op that proves we hold it. Not inheritable further, so
    # programs this job executes cannot keep the lock alive after it dies.
    fcntl.flock(args.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.set_inheritable(args.lock_fd, False)

    job_dir: Path = args.job_dir
    status = JobStatus.from_json(_files.read_json(job_dir / "status.json"))
    request: dict[str, Any] = _files.read_json(job_dir / "request.json")
    status = replace(status, state="running", pid=os.getpid(), started=_now(), message="running")
    _write(job_dir, status)
    signal.signal(signal.SIGTERM, _on_sigterm)
    context = JobContext(job_dir, status)
    log.info("job %s: %s", status.job_id, request["target"])
    try:
        result = _load_target(request["target"])(context, **request.get("params", {}))
    except JobCancelled:
        _write(job_dir, replace(context.status, state="cancelled", finished=_now(), message="cancelled",
                                error="cancelled on request"))
        _release(args.lock_fd)
        log.info("job %s cancelled", status.job_id)
        return 143
    except BaseException as exc:  # noqa: BLE001 - everything a target can throw ends up in the status, never silently
        traceback.print_exc(file=sys.stdout)
        _write(job_dir, replace(context.status, state="failed", finished=_now(), message="failed",
                                error=f"{type(exc).__name__}: {exc}"))
        _release(args.lock_fd)
        return 1
    last_message = context.status.message if context.status.message != "running" else ""
    _write(job_dir, replace(context.status, state="succeeded", finished=_now(), progress=1.0,
                            message=last_message or "done",
                            result=dict(result or {})))
    _release(args.lock_fd)
    log.info("job %s succeeded: %s", status.job_id, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
