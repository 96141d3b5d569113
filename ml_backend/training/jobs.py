"""Training jobs: at most one per ``MODEL_DIR``, each in its own process, surviving web restarts.

Why a process and a flock: a web request must never train in-process (Label Studio
gives the webhook one second), and a crashed or ``kill -9``-ed job must not leave a
lock that blocks training forever. :meth:`JobManager.start` takes an exclusive flock
on ``jobs/train.lock`` and hands that very open file to the job process
(``pass_fds``); the parent closes its copy, so from then on the job process alone
holds the lock and the kernel drops it the moment that process dies, however it dies.
Status lives in ``jobs/<job_id>/status.json`` (written atomically); a status that says
queued/running while nobody holds the lock is stale and is reported (and rewritten)
as failed.

Layout::

    MODEL_DIR/jobs/train.lock              flock of the running job
    MODEL_DIR/jobs/latest.json             {"job_id": ...}
    MODEL_DIR/jobs/<job_id>/request.json   target and parameters
    MODEL_DIR/jobs/<job_id>/status.json    JobStatus
    MODEL_DIR/jobs/<job_id>/log.txt        the job's stdout and stderr
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from ..errors import JobAlreadyRunningError, MdsVqaError
from . import _files

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
TRAINING_TARGET = "ml_backend.training.pipeline:training_job"
_PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the ml_backend package


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class JobStatus:
    """What a job is doing; ``result`` holds the target's return value (e.g. the new version id)."""

    job_id: str
    state: JobState
    target: str
    log_path: str
    created: str
    pid: int | None = None
    progress: float = 0.0
    message: str = ""
    started: str | None = None
    finished: str | None = None
    error: str | None = None
    stale: bool = False
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobStatus:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def tail_lines(path: str | os.PathLike, lines: int, *, max_bytes: int = 256 * 1024) -> list[str]:
    """The last ``lines`` lines of a text file, reading at most ``max_bytes`` from its end."""
    if lines <= 0:
        return []
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except FileNotFoundError:
        return []
    text = data.decode("utf-8", errors="replace").splitlines()
    if size > max_bytes and text:
        text = text[1:]  # the first line is probably cut
    return text[-lines:]


class JobError(MdsVqaError):
    """A job that cannot be found, started or waited for."""


class JobManager:
    """Start, inspect, wait for and cancel the training jobs of one ``MODEL_DIR``.

    Safe to construct per request: all state is on disk. Child processes started by
    this instance are reaped on later calls so they do not linger as zombies.
    """

    def __init__(self, model_dir: str | os.PathLike) -> None:
        self.model_dir = Path(model_dir)
        self.jobs_dir = self.model_dir / "jobs"
        self.lock_path = self.jobs_dir / "train.lock"
        self._children: list[subprocess.Popen] = []
        self._by_job: dict[str, subprocess.Popen] = {}

    # --- paths and raw status ------------------------------------------------------------------

    def job_dir(self, job_id: str) -> Path:
        if not job_id.startswith("job-") or "/" in job_id or job_id in (".", ".."):
            raise JobError(f"{job_id!r} is not a job id")
        return self.jobs_dir / job_id

    def _read(self, job_id: str) -> JobStatus:
        try:
            return JobStatus.from_json(_files.read_json(self.job_dir(job_id) / "status.json"))
        except FileNotFoundError:
            raise JobError(f"no job {job_id} in {self.jobs_dir}") from None

    def _write(self, status: JobStatus) -> None:
        _files.atomic_write_json(self.job_dir(status.job_id) / "status.json", status.to_json())

    def latest_id(self) -> str | None:
        try:
            return _files.read_json(self.jobs_dir / "latest.json").get("job_id")
        except FileNotFoundError:
            return None

    def _reap(self) -> None:
        self._children = [child for child in self._children if child.poll() is None]
        self._by_job = {job: child for job, child in self._by_job.items() if child in self._children}

    def process(self, job_id: str) -> subprocess.Popen | None:
        """The job's process while it runs, if this instance started it (e.g. to wait for its end)."""
        return self._by_job.get(job_id)

    # --- queries -------------------------------------------------------------------------------

    def status(self, job_id: str | None = None) -> JobStatus | None:
        """Status of ``job_id`` (default: the latest job; None when there never was one).

        A queued/running status with no live job behind it is repaired to failed/stale.
        """
        self._reap()
        job_id = job_id or self.latest_id()
        if job_id is None:
            return None
        status = self._read(job_id)
        if status.done:
            return status
        fd = _files.try_lock(self.lock_path)
        if fd is None:  # a live job process holds the lock
            return self._read(job_id)
        try:  # nobody holds the lock, so no job can be running: this status is stale
            return self._mark_stale(job_id)
        finally:
            os.close(fd)

    def _mark_stale(self, job_id: str) -> JobStatus:
        status = self._read(job_id)
        if status.done:
            return status
        stale = replace(status, state="failed", stale=True, finished=_now(),
                        error=status.error or "the job process died without reporting (killed, out of memory or "
                        f"crashed); see {status.log_path}")
        self._write(stale)
        return stale

    def running(self) -> JobStatus | None:
        """The job now holding the lock, if any."""
        status = self.status()
        return status if status is not None and not status.done else None

    def list(self) -> list[JobStatus]:
        """All jobs, oldest first."""
        if not self.jobs_dir.is_dir():
            return []
        ids = sorted(p.name for p in self.jobs_dir.iterdir() if p.name.startswith("job-") and p.is_dir())
        return [s for job_id in ids if (s := self._status_or_none(job_id)) is not None]

    def _status_or_none(self, job_id: str) -> JobStatus | None:
        try:
            return self.status(job_id)
        except (JobError, ValueError):
            return None

    def wait(self, job_id: str | None = None, timeout: float = 3600.0, interval: float = 0.1) -> JobStatus:
        """Poll until the job is done; :class:`JobError` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(job_id)
            if status is None:
                raise JobError("there is no job to wait for")
            if status.done:
                return status
            if time.monotonic() > deadline:
                raise JobError(f"job {status.job_id} still {status.state} after {timeout:.0f}s")
            time.sleep(interval)

    # --- actions -------------------------------------------------------------------------------

    def start(self, target: str, params: dict[str, Any] | None = None, *,
              env: dict[str, str] | None = None) -> JobStatus:
        """Start ``target`` ("module:function", called as ``function(context, **params)``) in a new process.

        Returns at once with the queued status. Raises :class:`JobAlreadyRunningError`
        while another job of this model directory runs. ``target`` comes from code, never
        from a request.
        """
        self._reap()
        if ":" not in target:
            raise JobError(f"target {target!r} must look like 'package.module:function'")
        fd = self._acquire_briefly()
        if fd is None:
            current = self.latest_id()
            state = self._read(current).state if current else "running"
            if state in TERMINAL_STATES:  # finished a moment ago; its process is still on its way out
                raise JobAlreadyRunningError(
                    f"the previous training job ({current}, {state}) is still exiting; try again in a moment",
                    current)
            raise JobAlreadyRunningError(
                f"a training job is already {state} for {self.model_dir} ({current}); wait for it to finish "
                "or cancel it before starting another", current)
        try:
            previous = self.latest_id()
            if previous is not None:
                self._mark_stale(previous)  # we hold the lock, so nothing of it can still be running
            job_id = f"job-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
            job_dir = self.job_dir(job_id)
            job_dir.mkdir(parents=True)
            log_path = job_dir / "log.txt"
            _files.atomic_write_json(job_dir / "request.json", {"target": target, "params": params or {}})
            status = JobStatus(job_id, "queued", target, str(log_path), created=_now(), message="starting")
            self._write(status)
            _files.atomic_write_json(self.jobs_dir / "latest.json", {"job_id": job_id})
            child_env = dict(os.environ if env is None else env)
            child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PROJECT_ROOT), child_env.get("PYTHONPATH")]))
            command = [sys.executable, "-m", "ml_backend.training.run", "--job-dir", str(job_dir),
                       "--lock-fd", str(fd)]
            with open(log_path, "ab") as log:
                try:
                    child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             # own session: survives a Ctrl-C of the web server
                                             pass_fds=(fd,), env=child_env, start_new_session=True)
                except OSError as exc:
                    self._write(replace(status, state="failed", finished=_now(), error=f"cannot start: {exc}"))
                    raise JobError(f"cannot start the job process: {exc}") from exc
            self._children.append(child)
            self._by_job[job_id] = child
            return replace(status, pid=child.pid)
        finally:
            os.close(fd)  # the child holds its own reference now

    def _acquire_briefly(self, patience: float = 0.5) -> int | None:
        """The job lock, waiting out the few milliseconds a :meth:`status` check holds it; None if a job runs."""
        deadline = time.monotonic() + patience
        while (fd := _files.try_lock(self.lock_path)) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return fd

    def start_training(self, labels: str | os.PathLike, **params: Any) -> JobStatus:
        """Start a training run of this model directory in a job process.

        ``params`` are the keyword arguments of :func:`ml_backend.training.pipeline.training_job`
        (objective, adapter, settings, mos_range, source_labels, activate); paths are made
        absolute here because the job may run from another working directory.
        """
        params["labels"] = str(Path(labels).resolve())
        if params.get("source_labels"):
            params["source_labels"] = str(Path(params["source_labels"]).resolve())
        params["model_dir"] = str(self.model_dir.resolve())
        return self.start(TRAINING_TARGET, params)

    def cancel(self, job_id: str | None = None) -> JobStatus:
        """Ask the running job to stop (SIGTERM); it records state "cancelled" when it exits."""
        status = self.status(job_id)
        if status is None or status.done:
            raise JobError("no running job to cancel")
        if status.pid is None:
            raise JobError(f"job {status.job_id} has not started yet; try again in a moment")
        with contextlib.suppress(ProcessLookupError):
            os.kill(status.pid, signal.SIGTERM)
        return status
