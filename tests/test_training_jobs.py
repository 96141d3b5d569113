"""One training job at a time per model directory, in its own process, robust to kill -9."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from ml_backend.errors import JobAlreadyRunningError
from ml_backend.training import _files
from ml_backend.training.jobs import JobError, JobManager

from .training_helpers import wait_for

WAIT = "tests.training_job_targets:wait_for_release"


@pytest.fixture
def jobs(tmp_path):
    manager = JobManager(tmp_path / "models")
    yield manager
    for child in manager._children:  # never leave a job process behind
        if child.poll() is None:
            child.kill()
            child.wait()


def running_with_pid(jobs, job_id):
    status = jobs.status(job_id)
    return status if status.state == "running" and status.pid and status.progress == 0.25 else None


def test_second_start_is_refused_while_a_job_runs_then_allowed(jobs, tmp_path):
    release = tmp_path / "release"
    first = jobs.start(WAIT, {"release": str(release)})
    assert first.state == "queued" and first.pid is not None
    running = wait_for(lambda: running_with_pid(jobs, first.job_id), what="job running")
    assert running.pid == first.pid and running.message == "waiting for release"
    assert jobs.running().job_id == first.job_id

    with pytest.raises(JobAlreadyRunningError) as refused:
        jobs.start(WAIT, {"release": str(release)})
    assert refused.value.job_id == first.job_id and "already running" in str(refused.value)
    with pytest.raises(JobAlreadyRunningError):  # another web worker: same answer
        JobManager(jobs.model_dir).start(WAIT, {"release": str(release)})

    release.touch()
    done = jobs.wait(first.job_id, timeout=60)
    assert done.state == "succeeded" and done.progress == 1.0 and done.finished
    assert done.result == {"released": True, "job_id": first.job_id}
    assert jobs.running() is None and not _files.is_locked(jobs.lock_path)

    second = jobs.start(WAIT, {"release": str(release)})
    assert jobs.wait(second.job_id, timeout=60).state == "succeeded"
    assert [s.job_id for s in jobs.list()] == [first.job_id, second.job_id]


def test_kill_9_frees_the_lock_marks_the_job_failed_and_the_next_run_works(jobs, tmp_path):
    release = tmp_path / "release"
    job = jobs.start(WAIT, {"release": str(release)})
    running = wait_for(lambda: running_with_pid(jobs, job.job_id), what="job running")
    assert _files.is_locked(jobs.lock_path)
    os.kill(running.pid, signal.SIGKILL)

    stale = wait_for(lambda: (s := jobs.status(job.job_id)).done and s, what="stale job detected")
    assert stale.state == "failed" and stale.stale and "died" in stale.error
    assert not _files.is_locked(jobs.lock_path)
    assert jobs.status(job.job_id).state == "failed"  # the repair was written to disk
    assert JobManager(jobs.model_dir).status().stale  # and other processes see it

    release.touch()
    again = jobs.start(WAIT, {"release": str(release)})
    assert jobs.wait(again.job_id, timeout=60).state == "succeeded"


def test_failing_target_reports_the_error_and_logs_the_traceback(jobs):
    job = jobs.start("tests.training_job_targets:fail", {"message": "boom at step 3"})
    done = jobs.wait(job.job_id, timeout=60)
    assert done.state == "failed" and not done.stale
    assert done.error == "ValueError: boom at step 3"
    log = Path(done.log_path).read_text()
    assert "Traceback" in log and "boom at step 3" in log
    assert not _files.is_locked(jobs.lock_path)


def test_unknown_target_fails_cleanly(jobs):
    job = jobs.start("tests.no_such_module:run", {})
    done = jobs.wait(job.job_id, timeout=60)
    assert done.state == "failed" and "ModuleNotFoundError" in done.error


def test_cancel_stops_a_running_job(jobs, tmp_path):
    job = jobs.start(WAIT, {"release": str(tmp_path / "never")})
    wait_for(lambda: running_with_pid(jobs, job.job_id), what="job running")
    jobs.cancel()
    done = jobs.wait(job.job_id, timeout=60)
    assert done.state == "cancelled" and not done.stale
    with pytest.raises(JobError):
        jobs.cancel()


def test_no_jobs_yet_and_bad_ids(jobs):
    assert jobs.status() is None and jobs.running() is None and jobs.list() == []
    with pytest.raises(JobError):
        jobs.status("../../etc")
    with pytest.raises(JobError):
        jobs.status("job-20990101-000000-000000")
    with pytest.raises(JobError):
        jobs.start("not-a-target")
