"""The ``mdsvqa score-project`` run: the backend's pipeline in the foreground, with progress.

Same media resolver, score store, queue and prediction format as the server, so a
project scored here answers instantly when the server is asked later, and vice versa
(when both use the same MDSVQA_CACHE_DIR).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError
from ..labelstudio.client import Connection, LabelStudioApiError, api_for
from ..labelstudio.config import parse_label_config
from ..labelstudio.media import MediaResolver
from ..labelstudio.predictions import build_prediction
from ..prioritize.order import new_prediction_priority
from ..settings import Settings
from .actions import PUSH, post_prediction, push_payload
from .backfill import enqueue_project
from .metrics import BackendMetrics
from .outbox import ActionKind, Outbox
from .queue import JobOutcome, ScoreJob, ScoringQueue
from .store import BackendStore, StoredOutcome

log = logging.getLogger(__name__)


@dataclass
class ProjectRunSummary:
    project_id: int
    model_version: str
    lacking: int = 0
    posted: int = 0
    already_present: int = 0
    failed_video: int = 0
    failed_push: int = 0
    still_queued: int = 0
    project_version_set: bool = False

    def describe(self) -> str:
        lines = [
            f"project {self.project_id}, model version {self.model_version}",
            f"  tasks lacking a prediction: {self.lacking}",
            f"  predictions posted:         {self.posted}",
            f"  already present:            {self.already_present}",
            f"  videos that failed:         {self.failed_video}",
            f"  predictions not posted:     {self.failed_push}",
        ]
        if self.still_queued:
            lines.append(f"  still queued (Label Studio unreachable): {self.still_queued}; they are kept and "
                         "posted by the next score-project run of this project")
        if self.project_version_set:
            lines.append(f"  project model_version is now {self.model_version}")
        return "\n".join(lines)


PUSH_WAIT_S = 300.0  # how long the command waits for Label Studio to take the last predictions


def project_outbox_path(settings: Settings, project_id: int) -> Any:
    """The command's own outbox file (one per project: two runs never share a queue)."""
    return settings.cache_dir / f"outbox-project-{project_id}.sqlite"


class ProjectDelivery:
    """Where a score-project run's predictions go: its own outbox (the server's push policy, kept
    on disk), counted into ``summary``; then the project's model_version. Shared by the
    single-process run and the Ray run (``ml_backend.scale.ray_project``)."""

    def __init__(self, settings: Settings, api: Any, project_id: int, config: Any, version: str,
                 summary: ProjectRunSummary) -> None:
        self._api = api
        self._project_id = project_id
        self._config = config
        self._version = version
        self.summary = summary
        self._lock = threading.Lock()
        self.outbox = Outbox(project_outbox_path(settings, project_id), {"push": ActionKind(PUSH, self._push)},
                             lanes={"fast": 2}, on_outcome=self._count_outcome)

    def start(self) -> None:
        self.outbox.start()

    def stop(self) -> None:
        self.outbox.stop()

    def _push(self, _key: str, payload: dict[str, Any]) -> None:
        posted = post_prediction(self._api, int(payload["task"]), dict(payload["prediction"]))
        with self._lock:
            if posted:
                self.summary.posted += 1
            else:
                self.summary.already_present += 1

    def _count_outcome(self, _kind: str, result: str) -> None:
        if result == "gave_up":
            with self._lock:
                self.summary.failed_push += 1

    def deliver(self, task_id: int, difficulty: float | None, error: str | None) -> None:
        """Queue the task's prediction (the score the backend would give it), or count the failure."""
        if difficulty is None:
            self.summary.failed_video += 1
            log.warning("task %s: no prediction: %s", task_id, error or "no outcome")
            return
        score = new_prediction_priority(difficulty, task_id)  # as the backend's (prioritize.order)
        key, payload = push_payload(task_id, self._project_id,
                                    build_prediction(difficulty, self._config, self._version, score=score))
        self.outbox.ask("push", key, payload)

    def finish(self, *, set_project_version: bool) -> None:
        """Wait (bounded) for Label Studio to take the predictions, then set the project's model_version."""
        summary, project_id, version = self.summary, self._project_id, self._version
        if not self.outbox.wait_idle(PUSH_WAIT_S):
            summary.still_queued = len(self.outbox.pending("push"))
            log.error("project %s: Label Studio did not take %d predictions within %.0f s", project_id,
                      summary.still_queued, PUSH_WAIT_S)
        if set_project_version and (summary.posted or summary.already_present):
            try:
                if self._api.project_model_version(project_id) != version:
                    self._api.set_project_model_version(project_id, version)
                summary.project_version_set = True
            except LabelStudioApiError as exc:
                log.error("project %s: model_version not set: %s", project_id, exc)


def score_project(settings: Settings, project_id: int, *, set_project_version: bool = True,
                  progress: bool = True) -> ProjectRunSummary:
    from tqdm import tqdm

    from ..prioritize.features import FeatureRecorder
    from ..scoring import DifficultyScorer

    api_key = settings.label_studio_api_key
    if not settings.label_studio_url or api_key is None:
        raise ConfigurationError("score-project needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
    connection = Connection(settings.label_studio_url, api_key.get_secret_value())
    api = api_for(connection)
    config = parse_label_config(api.project_label_config(project_id))

    features = FeatureRecorder(settings.cache_dir / "features")  # kept for `mdsvqa prioritize`
    scorer = features.attach(DifficultyScorer.from_settings(settings))
    version = scorer.model_version
    summary = ProjectRunSummary(project_id, version)
    store = BackendStore(settings.backend_state_path)
    resolver = MediaResolver(settings.download_dir, max_bytes=settings.media_max_bytes,
                             timeout_s=settings.media_timeout_s, local_files_root=settings.local_files_root)
    queue = ScoringQueue(scorer=lambda: scorer, resolver=resolver, store=store, on_features=features.record,
                         metrics=BackendMetrics(), on_late_result=lambda *_: None, batch_size=settings.batch_size,
                         download_workers=settings.download_workers)
    delivery = ProjectDelivery(settings, api, project_id, config, version, summary)
    delivery.start()
    queue.start()
    try:
        work = enqueue_project(api, project_id, config, version, queue, store)
        summary.lacking = work.total
        summary.failed_video += len(work.unusable)
        items: list[tuple[int, StoredOutcome | JobOutcome | ScoreJob]] = [*work.done, *work.queued]
        bar = tqdm(total=work.total, desc=f"project {project_id}", unit="task", disable=not progress)
        bar.update(len(work.unusable))
        for task_id, pending in items:
            if isinstance(pending, ScoreJob):
                pending.wait(None)  # ends: downloads have a deadline, the scorer answers every video
                outcome: StoredOutcome | JobOutcome | None = pending.outcome
            else:
                outcome = pending
            delivery.deliver(task_id, outcome.difficulty if outcome else None,
                             outcome.error if outcome else None)
            bar.update(1)
        bar.close()
        delivery.finish(set_project_version=set_project_version)
    finally:
        queue.stop()
        delivery.stop()
        resolver.close()
        store.close()
    return summary
