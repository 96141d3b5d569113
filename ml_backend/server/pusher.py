"""Posting predictions that missed their /predict deadline to Label Studio, in the background.

Runs on its own thread so a slow Label Studio never stalls scoring, retries transient
failures with backoff, and first checks that the task has no prediction of this
version yet (a later /predict may have answered it already).
"""

from __future__ import annotations

import logging
import queue as stdqueue
import threading
import time
from dataclasses import dataclass

from ..labelstudio.client import LabelStudioApiError, api_for
from .metrics import BackendMetrics
from .predictions import build_prediction
from .queue import JobOutcome, PushTarget

log = logging.getLogger(__name__)

RETRY_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class PushItem:
    target: PushTarget
    difficulty: float
    model_version: str
    attempt: int = 0
    not_before: float = 0.0


def push_prediction(target: PushTarget, difficulty: float, model_version: str) -> bool:
    """Store one prediction unless the task already has one of this version. True if posted."""
    api = api_for(target.connection)
    if api.task_has_prediction(target.task_id, model_version):
        return False
    api.create_prediction(target.task_id, build_prediction(difficulty, target.config, model_version))
    return True


class PredictionPusher:
    def __init__(self, metrics: BackendMetrics) -> None:
        self._metrics = metrics
        self._queue: stdqueue.Queue[PushItem | None] = stdqueue.Queue()
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="mdsvqa-push", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(5)

    def submit(self, target: PushTarget, outcome: JobOutcome, model_version: str) -> None:
        """Queue a late result; failures have nothing to push (no placeholder predictions)."""
        if outcome.difficulty is None:
            log.warning("task %s: no prediction stored: %s", target.task_id, outcome.error)
            self._metrics.pushes.labels("skipped_failed").inc()
            return
        self._idle.clear()
        self._queue.put(PushItem(target, outcome.difficulty, model_version))

    def wait_idle(self, timeout: float) -> bool:
        """For tests and the score-project command: True once everything queued was handled."""
        return self._idle.wait(timeout)

    def _loop(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=1.0)
            except stdqueue.Empty:
                self._idle.set()
                continue
            if item is None:
                return
            delay = item.not_before - time.monotonic()
            if delay > 0:
                if self._queue.empty():
                    time.sleep(min(delay, 1.0))
                self._queue.put(item)  # not yet: let other items pass
                continue
            self._handle(item)
            if self._queue.empty():
                self._idle.set()

    def _handle(self, item: PushItem) -> None:
        task_id = item.target.task_id
        try:
            posted = push_prediction(item.target, item.difficulty, item.model_version)
        except LabelStudioApiError as exc:
            if exc.transient and item.attempt < len(RETRY_DELAYS_S):
                delay = RETRY_DELAYS_S[item.attempt]
                log.info("task %s: pushing the prediction failed (%s); retry in %.0f s", task_id, exc, delay)
                self._queue.put(PushItem(item.target, item.difficulty, item.model_version, item.attempt + 1,
                                         time.monotonic() + delay))
                self._metrics.pushes.labels("retry").inc()
                return
            log.error("task %s: giving up pushing the prediction: %s", task_id, exc)
            self._metrics.pushes.labels("failed").inc()
            return
        except Exception:
            log.exception("task %s: pushing the prediction failed", task_id)
            self._metrics.pushes.labels("failed").inc()
            return
        self._metrics.pushes.labels("posted" if posted else "already_present").inc()
