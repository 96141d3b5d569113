"""Helpers of the training tests: condition polling, child processes, the tiny model fixture.

A plain module (not conftest.py) so it merges without touching other test helpers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_VIDEOS = REPO_ROOT.parent.parent / "shared" / "videos"
if not SHARED_VIDEOS.is_dir():
    SHARED_VIDEOS = Path("/work/shared/videos")


def wait_for(condition: Callable[[], object], timeout: float = 30.0, interval: float = 0.02, what: str = "condition"):
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def spawn_python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    """Start ``python -c code args...`` with the repository importable."""
    return subprocess.Popen([sys.executable, "-c", code, *args], env=child_env(), cwd=REPO_ROOT, **kwargs)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2.5-VL base and adapter on disk, written once per test session."""
    from ml_backend.model.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    write_tiny_model(root)
    return root
