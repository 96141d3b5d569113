"""The backend re-orders each project's queue by itself, in the background, debounced.

What asks for a pass (``BackendPriority``): the first /setup of a project per model
version and process, a /predict that had something to answer (scores arrived: "Retrieve
predictions", a task opened), and the annotation events the webhook records. Nothing runs
inside those requests: a request only (re)sets the project's due time, ``debounce_s``
after the latest ask, but at most ``5 x debounce_s`` after the first ask still waiting,
so a steady stream of labels still gets re-orderings. One thread runs the passes, one
project at a time; asks arriving meanwhile schedule the next pass.

A pass that fails on a transient Label Studio error (network, 5xx, a model_version sync
not done yet) is retried with backoff; other failures are logged and wait for the next
ask. While the scoring queue or the pusher still has work and some unlabeled tasks lack
a prediction, another pass is scheduled, so late predictions join the order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..labelstudio.client import Connection, LabelStudioApiError, api_for
from ..settings import PrioritySettings
from .features import FeatureRecorder, FeatureSource, FeatureStore, feature_computer
from .labelstudio import SEQUENTIAL, PriorityApi
from .run import VIEW_TITLE, PriorityError, PrioritySummary, prioritize_project

log = logging.getLogger(__name__)

MAX_WAIT_FACTOR = 5.0
RETRY_DELAYS_S = (2.0, 5.0, 15.0, 30.0, 60.0, 120.0)
BUSY_RECHECK_S = 5.0  # earliest re-run while predictions are still being scored or pushed
RECENT_PREDICT_S = 30.0  # Label Studio stores a /predict answer after it arrives: predictions may still land


@dataclass
class _Due:
    at: float  # monotonic time the pass may start
    first: float  # first ask still waiting (bounds the debounce)
    connection: Connection
    reason: str
    attempt: int = 0


class PriorityScheduler:
    """Debounced background passes, one project at a time; ``run`` does the work."""

    def __init__(self, run: Callable[[int, Connection], Any], *, debounce_s: float,
                 retry_delays_s: tuple[float, ...] = RETRY_DELAYS_S) -> None:
        self._run = run
        self._debounce_s = debounce_s
        self._retry_delays_s = retry_delays_s
        self._cond = threading.Condition()
        self._due: dict[int, _Due] = {}
        self._running: int | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.passes = 0  # finished passes, successful or not (tests wait on it)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="mdsvqa-priority", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def request(self, project_id: int, connection: Connection, reason: str, *, delay: float | None = None) -> None:
        """Ask for a pass ``delay`` (default: the debounce) from now. Never blocks on the pass."""
        now = time.monotonic()
        wait = self._debounce_s if delay is None else delay
        with self._cond:
            due = self._due.get(project_id)
            if due is None:
                self._due[project_id] = _Due(now + wait, now, connection, reason)
            else:
                limit = due.first + max(MAX_WAIT_FACTOR * self._debounce_s, wait)
                due.at = min(max(due.at, now + wait), limit)
                due.connection, due.reason = connection, reason
            self._cond.notify_all()

    def pending(self) -> dict[int, float]:
        """Project id -> seconds until its pass (tests, logs)."""
        now = time.monotonic()
        with self._cond:
            return {project: max(0.0, due.at - now) for project, due in self._due.items()}

    @property
    def idle(self) -> bool:
        with self._cond:
            return not self._due and self._running is None

    def _next(self) -> tuple[int, _Due] | None:
        with self._cond:
            while not self._stopping:
                if self._due:
                    project, due = min(self._due.items(), key=lambda item: item[1].at)
                    wait = due.at - time.monotonic()
                    if wait <= 0:
                        del self._due[project]
                        self._running = project
                        return project, due
                    self._cond.wait(min(wait, 1.0))
                else:
                    self._cond.wait(1.0)
            return None

    def _loop(self) -> None:
        while (item := self._next()) is not None:
            project, due = item
            try:
                self._run(project, due.connection)
            except LabelStudioApiError as exc:
                if exc.transient and due.attempt < len(self._retry_delays_s):
                    delay = self._retry_delays_s[due.attempt]
                    log.info("project %s: ordering the queue failed (%s); retry in %.0f s", project, exc, delay)
                    self._retry(project, due, delay)
                else:
                    log.error("project %s: ordering the queue failed: %s", project, exc)
            except PriorityError as exc:
                log.warning("project %s: queue not ordered: %s", project, exc)
            except Exception:  # noqa: BLE001 - the thread must survive anything
                log.exception("project %s: ordering the queue failed", project)
            finally:
                with self._cond:
                    self._running = None
                    self.passes += 1
                    self._cond.notify_all()

    def _retry(self, project: int, due: _Due, delay: float) -> None:
        now = time.monotonic()
        with self._cond:
            if project in self._due:  # a new ask came in meanwhile: it runs anyway
                return
            self._due[project] = _Due(now + delay, now, due.connection, due.reason, due.attempt + 1)
            self._cond.notify_all()


class BackendPriority:
    """The backend's side: what asks for a pass, and how a pass gets model, features and Label Studio."""

    def __init__(self, settings: PrioritySettings, *, recorder: FeatureRecorder, scorer: Callable[[], Any],
                 resolver: Any, busy: Callable[[], bool], registry: Any = None) -> None:
        self.settings = settings
        self.recorder = recorder
        self._scorer = scorer  # waits for the model
        self._resolver = resolver
        self._busy = busy
        self._seen: set[tuple[int, str]] = set()
        self._warned: set[int] = set()
        self._last_predict: dict[int, float] = {}
        self._lock = threading.Lock()
        self.last: dict[int, PrioritySummary] = {}
        self.scheduler = PriorityScheduler(self.run, debounce_s=settings.debounce_s)
        self._passes = None
        if registry is not None:
            from prometheus_client import Counter

            self._passes = Counter("mdsvqa_priority_passes", "Queue ordering passes", ["result"], registry=registry)
            self._scores = Counter("mdsvqa_priority_scores_written", "Prediction scores written by ordering passes",
                                   registry=registry)

    # lifecycle
    def start(self) -> None:
        if self.settings.enabled:
            self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.stop()

    # asks ------------------------------------------------------------------------------------
    def on_setup(self, project_id: int | None, connection: Connection | None, version: str) -> None:
        """Once per project and model version per process: the view exists and the order is current."""
        if not self.settings.enabled or project_id is None or connection is None:
            return
        with self._lock:
            if (project_id, version) in self._seen:
                return
            self._seen.add((project_id, version))
        self.scheduler.request(project_id, connection, "setup")

    def on_predict(self, project_id: int | None, connection: Connection | None, answered: int) -> None:
        if self.settings.enabled and project_id is not None and connection is not None and answered:
            with self._lock:
                self._last_predict[project_id] = time.monotonic()
            self.scheduler.request(project_id, connection, "predictions")

    def on_event(self, project_id: int | None, connection: Connection | None, recorded: bool) -> None:
        if self.settings.enabled and recorded and project_id is not None and connection is not None:
            self.scheduler.request(project_id, connection, "labels")

    # a pass ------------------------------------------------------------------------------------
    def run(self, project_id: int, connection: Connection) -> PrioritySummary:
        scorer = self._scorer()
        store = self.recorder.store
        computer = None
        if store is not None and hasattr(scorer, "loaded") and hasattr(scorer, "settings"):
            computer = feature_computer(scorer.settings, lambda: scorer.loaded, self._resolver, connection)
        source = FeatureSource(store, computer) if store is not None else None
        try:
            summary = prioritize_project(
                PriorityApi(api_for(connection)), project_id, model_version=scorer.model_version, features=source,
                budget=self.settings.budget, budget_fraction=self.settings.budget_fraction,
                lam=self.settings.diversity_lambda, device=_selection_device(scorer))
        except Exception:
            if self._passes is not None:
                self._passes.labels("error").inc()
            raise
        if self._passes is not None:
            self._passes.labels("ok").inc()
            self._scores.inc(summary.updated)
        self.last[project_id] = summary
        self._report(project_id, summary)
        with self._lock:
            recent = time.monotonic() - self._last_predict.get(project_id, -RECENT_PREDICT_S) < RECENT_PREDICT_S
        if summary.lacking_prediction and (recent or self._busy()):
            # predictions are still being scored, pushed or stored: order again once they are in
            self.scheduler.request(project_id, connection, "late predictions",
                                   delay=max(self.settings.debounce_s, BUSY_RECHECK_S))
        return summary

    def _report(self, project_id: int, summary: PrioritySummary) -> None:
        groups = (("tasks left unscored (no usable prediction of this version)", summary.without_difficulty),
                  ("tasks not pickable (no features)", summary.without_features),
                  ("labeled tasks without features", summary.seeds_without_features))
        for what, found in groups:
            if found:
                task_id, reason = next(iter(found.items()))
                log.info("project %s: %d %s, e.g. task %s: %s", project_id, len(found), what, task_id, reason)
        if summary.sampling != SEQUENTIAL and project_id not in self._warned:
            self._warned.add(project_id)
            log.warning("project %s uses %r: Label Studio follows the %r view only under %r", project_id,
                        summary.sampling, VIEW_TITLE, SEQUENTIAL)


def _selection_device(scorer: Any) -> str:
    runtime = getattr(getattr(scorer, "spec", None), "runtime", None)
    device = str(getattr(runtime, "device", "cpu") or "cpu")
    return device if device.startswith("cuda") else "cpu"


__all__ = ["BackendPriority", "FeatureStore", "PriorityScheduler"]
