"""Jobs for worker-process tests: importable by the workers (module-level, light imports only)."""

from __future__ import annotations

import os
import signal
import time

import numpy as np


def arrays(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"big": rng.standard_normal(n).astype(np.float32), "small": np.arange(3), "grid": np.array([1, 2, 3]),
            "pid": os.getpid(), "strided": rng.standard_normal((64, 512))[:, ::2]}


def sleep(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def fail(message: str) -> None:
    raise ValueError(message)


class Unpicklable(Exception):
    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message)
        self.code = code
        self.handle = lambda: None  # a lambda does not pickle


def fail_unpicklable() -> None:
    raise Unpicklable("no way back", code=3)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_on_marker(job, item):
    """The scorer's worker job, except that a video named *kill-me* gets its worker killed (as by the OOM killer)."""
    from ml_backend.scoring.prepare import prepare_in_worker

    if "kill-me" in item[0].name:
        die()
    return prepare_in_worker(job, item)


def with_model_config(config: str, job, item):
    """The scorer's worker job with an open_clip model config registered first (a small test CLIP)."""
    import open_clip

    from ml_backend.scoring.prepare import prepare_in_worker

    open_clip.add_model_config(config)
    return prepare_in_worker(job, item)
