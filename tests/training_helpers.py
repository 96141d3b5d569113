"""Helpers of the training tests: condition polling, child processes, the tiny model fixture.

A plain module (not conftest.py) so it merges without touching other test helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conditions import wait_for  # noqa: F401  (re-exported)
from tests.media import VIDEOS as SHARED_VIDEOS  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[1]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def spawn_python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    """Start ``python -c code args...`` with the repository importable."""
    return subprocess.Popen([sys.executable, "-c", code, *args], env=child_env(), cwd=REPO_ROOT, **kwargs)
