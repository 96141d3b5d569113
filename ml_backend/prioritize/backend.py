"""The backend re-orders each project's queue by itself, in the background, debounced.

What asks for a pass (``BackendPriority``): the first /setup of a project per model
version and process, a /predict that had something to answer (scores arrived: "Retrieve
predictions", a task opened), and the annotation events the webhook records. Nothing runs
inside those requests: an ask goes to the backend's outbox (``ml_backend.server.outbox``,
kind ``priority``, keyed by project), which runs the pass ``debounce_s`` after the latest
ask, but at most ``5 x debounce_s`` after the first ask still waiting, so a steady stream
of labels still gets re-orderings; asks arriving during a pass schedule the next one.
Passes run on the outbox's slow lane, so they never hold up prediction pushes.

A pass that fails on a transient Label Studio error (network, 5xx, a model_version sync
not done yet) is retried by the outbox's policy; other failures are logged and wait for
the next ask. While the scoring queue or the outbox still has predictions to deliver and
some unlabeled tasks lack a prediction, another pass is asked for, so late predictions
join the order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..labelstudio.client import SEQUENTIAL, Connection, api_for
from ..settings import PrioritySettings
from .features import FeatureRecorder, FeatureSource, FeatureStore, feature_computer
from .order import new_prediction_priority
from .run import VIEW_TITLE, PrioritySummary, prioritize_project

log = logging.getLogger(__name__)

BUSY_RECHECK_S = 5.0  # earliest re-run while predictions are still being scored or pushed
RECENT_PREDICT_S = 30.0  # Label Studio stores a /predict answer after it arrives: predictions may still land

Ask = Callable[[int, str, "float | None"], None]  # (project, reason, delay or None: the debounce)


class BackendPriority:
    """The backend's side: what asks for a pass, and how a pass gets model, features and Label Studio."""

    def __init__(self, settings: PrioritySettings, *, recorder: FeatureRecorder, scorer: Callable[[], Any],
                 resolver: Any, busy: Callable[[], bool], ask: Ask, registry: Any = None) -> None:
        self.settings = settings
        self.recorder = recorder
        self._scorer = scorer  # waits for the model
        self._resolver = resolver
        self._busy = busy
        self._seen: set[tuple[int, str]] = set()
        self._warned: set[int] = set()
        self._last_predict: dict[int, float] = {}
        self._lock = threading.Lock()
        self.last: dict[int, PrioritySummary] = {}  # the latest pass of each project (status page, report)
        self._priorities: dict[int, tuple[str, dict[int, float]]] = {}  # project -> (version, task -> score)
        self._ask = ask
        self._passes = None
        if registry is not None:
            from prometheus_client import Counter

            self._passes = Counter("mdsvqa_priority_passes", "Queue ordering passes", ["result"], registry=registry)
            self._scores = Counter("mdsvqa_priority_scores_written", "Prediction scores written by ordering passes",
                                   registry=registry)

    # asks ------------------------------------------------------------------------------------
    def on_setup(self, project_id: int | None, connection: Connection | None, version: str) -> None:
        """Once per project and model version per process: the view exists and the order is current."""
        if not self.settings.enabled or project_id is None or connection is None:
            return
        with self._lock:
            if (project_id, version) in self._seen:
                return
            self._seen.add((project_id, version))
        self._ask(project_id, "setup", None)

    def on_predict(self, project_id: int | None, connection: Connection | None, answered: int) -> None:
        if self.settings.enabled and project_id is not None and connection is not None and answered:
            with self._lock:
                self._last_predict[project_id] = time.monotonic()
            self._ask(project_id, "predictions", None)

    def on_event(self, project_id: int | None, connection: Connection | None, recorded: bool) -> None:
        if self.settings.enabled and recorded and project_id is not None and connection is not None:
            self._ask(project_id, "labels", None)

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
                api_for(connection), project_id, model_version=scorer.model_version, features=source,
                budget=self.settings.budget, budget_fraction=self.settings.budget_fraction,
                lam=self.settings.diversity_lambda, device=_selection_device(scorer),
                task_fields=self.settings.task_fields)
        except Exception:
            if self._passes is not None:
                self._passes.labels("error").inc()
            raise
        if self._passes is not None:
            self._passes.labels("ok").inc()
            self._scores.inc(summary.updated)
        self.last[project_id] = summary
        self._priorities[project_id] = (summary.model_version, {e.task_id: e.priority for e in summary.order})
        self._report(project_id, summary)
        with self._lock:
            recent = time.monotonic() - self._last_predict.get(project_id, -RECENT_PREDICT_S) < RECENT_PREDICT_S
        if summary.lacking_prediction and (recent or self._busy()):
            # predictions are still being scored, pushed or stored: order again once they are in
            self._ask(project_id, "late predictions", max(self.settings.debounce_s, BUSY_RECHECK_S))
        return summary

    def score_for(self, project_id: int | None, task_id: object, difficulty: float, version: str) -> float:
        """The prediction score to answer with: the task's place from the last pass of this version if it
        ordered the task (a test request for an ordered task), else what the next pass gives it."""
        known = self._priorities.get(project_id) if project_id is not None else None
        if known is not None and known[0] == version and isinstance(task_id, int) and task_id in known[1]:
            return known[1][task_id]
        return new_prediction_priority(round(difficulty, 2), task_id)  # the Number control's value, as passes read it

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


__all__ = ["BackendPriority", "FeatureStore"]
