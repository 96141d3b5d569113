"""Scoring a whole project: every task without a prediction of the current model version.

Shared by ``mdsvqa score-project`` (waits, shows progress) and the backend's optional
background pass after /setup (MDSVQA_SCORE_PROJECT_ON_SETUP; fire and forget). Both put
the work in the same scoring queue as /predict, at the lowest priority, so interactive
requests overtake it.
"""

from __future__ import annotations

import logging
import queue as stdqueue
import threading
from dataclasses import dataclass, field

from ..labelstudio.client import Connection, LabelStudioApi, LabelStudioApiError, api_for
from ..labelstudio.config import ProjectConfig
from ..labelstudio.media import media_key
from .pusher import PredictionPusher
from .queue import PRIORITY_BACKFILL, JobOutcome, MediaRequest, PushTarget, ScoreJob, ScoringQueue
from .store import BackendStore, StoredOutcome

log = logging.getLogger(__name__)


@dataclass
class ProjectWork:
    """Tasks of a project to predict: finished ones with their outcome, the rest as queued jobs."""

    done: list[tuple[int, StoredOutcome | JobOutcome]] = field(default_factory=list)
    queued: list[tuple[int, ScoreJob]] = field(default_factory=list)
    unusable: list[tuple[int, str]] = field(default_factory=list)  # task id, why

    @property
    def total(self) -> int:
        return len(self.done) + len(self.queued) + len(self.unusable)


def enqueue_project(api: LabelStudioApi, project_id: int, config: ProjectConfig, model_version: str,
                    queue: ScoringQueue, store: BackendStore) -> ProjectWork:
    work = ProjectWork()
    for task_id, data in api.tasks_lacking_prediction(project_id, model_version):
        ref = data.get(config.video_field)
        if not isinstance(ref, str) or not ref.strip():
            work.unusable.append((task_id, f"task has no '{config.video_field}' media URL"))
            continue
        key = media_key(ref.strip(), api.connection)
        stored = store.outcome(model_version, key)
        if stored is not None:
            work.done.append((task_id, stored))
            continue
        job = queue.submit(MediaRequest(key, ref.strip(), task_id, api.connection), priority=PRIORITY_BACKFILL,
                           model_version=model_version)
        if isinstance(job, StoredOutcome):
            work.done.append((task_id, job))
        else:
            work.queued.append((task_id, job))
    return work


@dataclass(frozen=True)
class _BackfillRequest:
    project_id: int
    connection: Connection
    config: ProjectConfig
    model_version: str


class ProjectBackfill:
    """The backend's background pass: enqueue, and let the pusher post results as they come."""

    def __init__(self, queue: ScoringQueue, store: BackendStore, pusher: PredictionPusher) -> None:
        self._queue = queue
        self._store = store
        self._pusher = pusher
        self._requests: stdqueue.Queue[_BackfillRequest | None] = stdqueue.Queue()
        self._seen: set[tuple[int, str]] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="mdsvqa-backfill", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._requests.put(None)

    def request(self, project_id: int, connection: Connection, config: ProjectConfig, model_version: str,
                *, force: bool = False) -> bool:
        """Once per project and model version per process (``force``: again, e.g. after a rollback to it)."""
        with self._lock:
            if (project_id, model_version) in self._seen and not force:
                return False
            self._seen.add((project_id, model_version))
        self._requests.put(_BackfillRequest(project_id, connection, config, model_version))
        return True

    def _loop(self) -> None:
        import time

        while (item := self._requests.get()) is not None:
            time.sleep(1.0)  # /setup is still open on Label Studio's side; let it finish first
            try:
                work = enqueue_project(api_for(item.connection), item.project_id, item.config,
                                       item.model_version, self._queue, self._store)
            except LabelStudioApiError as exc:
                log.error("project %s: cannot list tasks for the background pass: %s", item.project_id, exc)
                with self._lock:
                    self._seen.discard((item.project_id, item.model_version))
                continue
            for task_id, outcome in work.done:
                self._pusher.submit(PushTarget(task_id, item.connection, item.config),
                                    JobOutcome(outcome.difficulty, outcome.error, True), item.model_version)
            for task_id, job in work.queued:
                target = PushTarget(task_id, item.connection, item.config)
                if not job.push_to(target) and job.outcome is not None:
                    self._pusher.submit(target, job.outcome, item.model_version)
            log.info("project %s: background pass: %d tasks lacked a prediction (%d known, %d queued, %d unusable)",
                     item.project_id, work.total, len(work.done), len(work.queued), len(work.unusable))
