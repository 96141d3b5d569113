"""The ``mdsvqa score-project`` run: the backend's pipeline in the foreground, with progress.

Same media resolver, score store, queue and prediction format as the server, so a
project scored here answers instantly when the server is asked later, and vice versa
(when both use the same MDSVQA_CACHE_DIR).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ..labelstudio.client import Connection, LabelStudioApiError, api_for
from ..labelstudio.config import parse_label_config
from ..labelstudio.media import MediaResolver
from ..settings import Settings
from .backfill import enqueue_project
from .metrics import BackendMetrics
from .pusher import RETRY_DELAYS_S, push_prediction
from .queue import JobOutcome, PushTarget, ScoringQueue
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
        if self.project_version_set:
            lines.append(f"  project model_version is now {self.model_version}")
        return "\n".join(lines)


def _push_with_retries(target: PushTarget, difficulty: float, version: str) -> bool | None:
    """True posted, False already there, None failed for good."""
    for attempt in range(len(RETRY_DELAYS_S) + 1):
        try:
            return push_prediction(target, difficulty, version)
        except LabelStudioApiError as exc:
            if not exc.transient or attempt == len(RETRY_DELAYS_S):
                log.error("task %s: prediction not posted: %s", target.task_id, exc)
                return None
            time.sleep(RETRY_DELAYS_S[attempt])
    return None


def score_project(settings: Settings, project_id: int, *, set_project_version: bool = True,
                  progress: bool = True) -> ProjectRunSummary:
    from tqdm import tqdm

    from ..prioritize.features import FeatureRecorder
    from ..scoring import DifficultyScorer

    connection = Connection(settings.label_studio_url, settings.label_studio_api_key.get_secret_value())
    api = api_for(connection)
    config = parse_label_config(api.project_label_config(project_id))

    features = FeatureRecorder(settings.cache_dir / "features")  # kept for `mdsvqa prioritize`
    scorer = features.attach(DifficultyScorer.from_settings(settings))
    version = scorer.model_version
    summary = ProjectRunSummary(project_id, version)
    store = BackendStore(settings.backend_state_path)
    resolver = MediaResolver(settings.download_dir, max_bytes=settings.media_max_bytes,
                             timeout_s=settings.media_timeout_s, local_files_root=settings.local_files_root)
    queue = ScoringQueue(scorer=lambda: scorer, resolver=features.track(resolver), store=store,
                         metrics=BackendMetrics(), on_late_result=lambda *_: None, batch_size=settings.batch_size,
                         download_workers=settings.download_workers)
    queue.start()
    try:
        work = enqueue_project(api, project_id, config, version, queue, store)
        summary.lacking = work.total
        summary.failed_video += len(work.unusable)
        items: list[tuple[int, object]] = [*work.done, *work.queued]
        bar = tqdm(total=work.total, desc=f"project {project_id}", unit="task", disable=not progress)
        bar.update(len(work.unusable))
        for task_id, pending in items:
            outcome = pending if isinstance(pending, (StoredOutcome, JobOutcome)) else None
            if outcome is None:
                pending.wait(None)
                outcome = pending.outcome
            if outcome is None or outcome.difficulty is None:
                summary.failed_video += 1
                log.warning("task %s: no prediction: %s", task_id, outcome.error if outcome else "no outcome")
            else:
                posted = _push_with_retries(PushTarget(task_id, connection, config), outcome.difficulty, version)
                if posted is None:
                    summary.failed_push += 1
                elif posted:
                    summary.posted += 1
                else:
                    summary.already_present += 1
            bar.update(1)
        bar.close()
        if set_project_version and (summary.posted or summary.already_present):
            try:
                if api.project_model_version(project_id) != version:
                    api.set_project_model_version(project_id, version)
                summary.project_version_set = True
            except LabelStudioApiError as exc:
                log.error("project %s: model_version not set: %s", project_id, exc)
    finally:
        queue.stop()
        resolver.close()
        store.close()
    return summary
