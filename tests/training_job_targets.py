"""Job targets for the job-machinery tests (imported by the job process by name)."""

from __future__ import annotations

import time
from pathlib import Path


def wait_for_release(context, release: str, timeout: float = 120.0) -> dict:
    """Report progress, then block until the test creates ``release`` (or give up after ``timeout``)."""
    context.progress(0.25, "waiting for release", force=True)
    deadline = time.monotonic() + timeout
    while not Path(release).exists():
        if time.monotonic() > deadline:
            raise TimeoutError("never released")
        time.sleep(0.01)
    return {"released": True, "job_id": context.job_id}


def fail(context, message: str) -> dict:
    raise ValueError(message)
