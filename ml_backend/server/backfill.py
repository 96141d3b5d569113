"""Scoring a whole project: every task without a prediction of the current model version.

Shared by ``mdsvqa score-project`` (waits, shows progress) and the backend's optional
background pass after /setup (MDSVQA_SCORE_PROJECT_ON_SETUP; an outbox action, results
pushed through the outbox as they come). Both put the work in the same scoring queue as
/predict, at the lowest priority, so interactive requests overtake it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..labelstudio.client import LabelStudioApi
from ..labelstudio.config import ProjectConfig
from ..labelstudio.media import media_key
from .queue import PRIORITY_BACKFILL, JobOutcome, MediaRequest, ScoreJob, ScoringQueue
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
        ref, why = config.media_ref(data)
        if ref is None:
            work.unusable.append((task_id, why))
            continue
        key = media_key(ref, api.connection)
        stored = store.outcome(model_version, key)
        if stored is not None:
            work.done.append((task_id, stored))
            continue
        job = queue.submit(MediaRequest(key, ref, task_id, api.connection), priority=PRIORITY_BACKFILL,
                           model_version=model_version)
        if isinstance(job, StoredOutcome):
            work.done.append((task_id, job))
        else:
            work.queued.append((task_id, job))
    return work
