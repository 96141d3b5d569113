""""Start Training" in Label Studio -> a training job process; its status for the backend's routes.

Label Studio gives the webhook one second, so the hook only checks and starts: the job
process (``ml_backend.training.project_job``) collects the labels, downloads the videos and
trains. One job per MODEL_DIR at a time (the JobManager's flock): a second press while one
runs is refused with HTTP 409 and a message saying which job runs (Label Studio then shows
the ML backend in an error state with that response until its next health check) and a
log line. The Label Studio token goes to the job through its environment only.

Auto-train (``MDSVQA_TRAIN_AUTO_AFTER_LABELS`` > 0): after that many annotation events
(created/updated) of a project since its last started run, a run starts by itself.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import JobAlreadyRunningError, MdsVqaError
from ..labelstudio.client import Connection
from ..labelstudio.config import ProjectConfig
from ..settings import Settings, credential_env_names, credential_fields
from ..training.jobs import JobManager, JobStatus, tail_lines
from .outbox import ActionKind, RetryLater
from .outbox_state import ActionPolicy
from .store import BackendStore
from .webhooks import LABEL_ADDING_ACTIONS, START_TRAINING, TRAINING_STARTED

log = logging.getLogger(__name__)

COUNTED_ACTIONS = LABEL_ADDING_ACTIONS


def job_settings(settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """The server's effective settings (command-line options included) for the job, credentials left out.

    Which fields are credentials is said by the settings themselves (``credential_fields``: typed
    SecretStr, or marked as part of a credential); the job gets Label Studio's URL and token
    explicitly, through its environment.
    """
    top = settings.model_dump(mode="json", exclude={*credential_fields(Settings), "training"})
    training = settings.training.model_dump(mode="json")
    if settings.training.source_labels is not None:
        training["source_labels"] = str(Path(settings.training.source_labels).expanduser().resolve())
    return top, training


class BackendTraining:
    """The backend's TrainingHook: starts project training jobs, refuses a second one, counts labels."""

    def __init__(self, settings: Settings, store: BackendStore, *,
                 connection_for: Callable[[int], Connection | None],
                 config_for: Callable[[int], ProjectConfig | None] = lambda _project: None,
                 on_finished: Callable[[], None] | None = None, target: str | None = None) -> None:
        from ..training.project_job import TARGET

        self.settings = settings
        self.store = store
        self.jobs = JobManager(settings.model_dir)
        self.target = target or TARGET
        self._connection_for = connection_for
        self._config_for = config_for
        self._on_finished = on_finished
        self._lock = threading.Lock()  # JobManager keeps its child list unsynchronised
        self._ask: Callable[[str], None] | None = None

    def action(self) -> ActionKind:
        """The outbox's ``job`` action: look at a started job every second until its process ended."""
        return ActionKind(ActionPolicy("job", lane="model", retry_delays_s=(1.0,), retry_forever=True), self._reap)

    def attach(self, ask: Callable[[str], None]) -> None:
        """``ask(job_id)`` schedules the ``job`` action (the service binds it to its outbox)."""
        self._ask = ask

    # TrainingHook -------------------------------------------------------------------------------
    def start_training(self, project_id: int, event: dict[str, Any]) -> dict[str, Any]:
        """"Start Training" pressed: start a job or say clearly why not. Returns within milliseconds."""
        self.store.record_event(START_TRAINING, project_id, event)
        return self.start(project_id, trigger="button")

    def annotation_recorded(self, project_id: int, action: str) -> dict[str, Any] | None:
        """Auto-train: start a run once enough annotation events arrived since the last one started."""
        threshold = self.settings.training.auto_after_labels
        if threshold <= 0 or action not in COUNTED_ACTIONS:
            return None
        since = self.store.last_event_id(project_id, TRAINING_STARTED)
        count = self.store.count_events(project_id, COUNTED_ACTIONS, after_id=since)
        if count < threshold:
            return None
        with self._lock:
            running = self.jobs.running()
        if running is not None:
            log.info("project %s: %d new annotation event(s), but a training job is running; auto-train waits",
                     project_id, count)
            return None
        reply = self.start(project_id, trigger=f"auto after {count} annotation events")
        return reply

    # Starting -----------------------------------------------------------------------------------
    def start(self, project_id: int, *, trigger: str) -> dict[str, Any]:
        connection = self._connection_for(project_id)
        if connection is None:
            return self._refuse(project_id, 422, "no Label Studio URL and token are known for this project, so "
                                "the job cannot read its labels: let Label Studio call /setup (reconnect the "
                                "model) or set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
        config = self._config_for(project_id)
        if config is not None and config.mos is None:
            return self._refuse(project_id, 422, "the project's label config has no MOS control to learn from: add a "
                                'Number control for the annotators\' rating, e.g. <Number name="mos" '
                                'toName="<your video>" min="1" max="5" mdsvqa-role="mos"/>')
        with self._lock:
            running = self.jobs.running()  # no waiting: a refusal must not eat Label Studio's second
        if running is not None:
            return self._refuse(project_id, 409, f"a training job is already running ({running.job_id}, "
                                f"{running.state}, {running.progress:.0%}: {running.message}); wait for it to "
                                "finish; see GET /train/status", job_id=running.job_id)
        top, training = job_settings(self.settings)
        hidden = credential_env_names(Settings)
        env = {k: v for k, v in os.environ.items() if k not in hidden}
        env["LABEL_STUDIO_URL"] = connection.url
        env["LABEL_STUDIO_API_KEY"] = connection.token
        params = {"project_id": project_id, "model_dir": str(Path(self.settings.model_dir).resolve()),
                  "settings": top, "training": training, "trigger": trigger}
        try:
            with self._lock:
                status = self.jobs.start(self.target, params, env=env)
        except JobAlreadyRunningError as exc:
            with self._lock:
                running = self.jobs.running()
            detail = f" ({running.progress:.0%}: {running.message})" if running is not None else ""
            return self._refuse(project_id, 409, f"{exc}{detail}; see GET /train/status", job_id=exc.job_id)
        except MdsVqaError as exc:
            return self._refuse(project_id, 500, f"the training job could not be started: {exc}")
        self.store.record_event(TRAINING_STARTED, project_id, {"job_id": status.job_id, "trigger": trigger})
        self._watch(status.job_id)
        log.info("project %s: training job %s started (%s, pid %s); objectives %s; log %s", project_id,
                 status.job_id, trigger, status.pid, ",".join(self.settings.training.objectives), status.log_path)
        return {"status": "started", "training": "started", "job": status.job_id, "job_id": status.job_id,
                "detail": f"training job {status.job_id} started; follow it at GET /train/status"}

    def _watch(self, job_id: str) -> None:
        """Reap the job process when it ends (no zombie) and tell the server to look for a new version."""
        if self._ask is not None:
            self._ask(job_id)

    def _reap(self, job_id: str, _payload: dict[str, Any]) -> None:
        with self._lock:
            process = self.jobs.process(job_id)
        if process is None:
            return  # started by an earlier process of ours, or already reaped
        code = process.poll()
        if code is None:
            raise RetryLater(f"training job {job_id} still running")
        with self._lock:
            status = self.jobs.status(job_id)
        log.info("training job %s ended (exit %s): %s%s", job_id, code, status.state if status else "?",
                 f": {status.error}" if status is not None and status.error else "")
        if self._on_finished is not None:
            self._on_finished()

    def _refuse(self, project_id: int, code: int, message: str, **extra: Any) -> dict[str, Any]:
        log.warning("project %s: training not started: %s", project_id, message)
        return {"status": "refused", "training": "refused", "http_status": code, "error": message, **extra}

    # Status -------------------------------------------------------------------------------------
    def status(self, job_id: str | None = None, *, log_lines: int = 0) -> dict[str, Any]:
        with self._lock:
            status: JobStatus | None = self.jobs.status(job_id)
        body: dict[str, Any] = {"running": status is not None and not status.done,
                                "job": status.to_json() if status is not None else None}
        if status is not None and log_lines:
            body["log"] = tail_lines(status.log_path, log_lines)
        return body

    def history(self) -> list[dict[str, Any]]:
        with self._lock:
            return [s.to_json() for s in self.jobs.list()]
