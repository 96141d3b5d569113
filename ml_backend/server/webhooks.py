"""Label Studio webhook events: acknowledge within Label Studio's 1 s, act later.

Label Studio gives webhooks one second, so nothing slow happens here: events are
recorded in the backend store and handed to hooks. START_TRAINING ("Start Training"
button, ``POST /api/ml/{id}/train``; its body holds only the project) goes to the
TrainingHook: the backend's is ``ml_backend.server.training.BackendTraining``, which starts
a job process or refuses (its reply's ``http_status``: 409 while a job runs). Recorded
annotation events are also shown to the hook (auto-train counts them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from .store import BackendStore

log = logging.getLogger(__name__)

START_TRAINING = "START_TRAINING"
TRAINING_STARTED = "TRAINING_STARTED"  # our own marker in the event table: auto-train counts labels after it
# Label events that bring or change a label (auto-train counts them); deletions do not.
LABEL_ADDING_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED")
ANNOTATION_ACTIONS = frozenset({*LABEL_ADDING_ACTIONS, "ANNOTATIONS_DELETED"})
# Actions Label Studio 1.23 sends that carry nothing for us (acknowledged, not recorded).
OTHER_KNOWN_ACTIONS = frozenset({
    "PROJECT_CREATED", "PROJECT_UPDATED", "PROJECT_DELETED", "TASKS_CREATED", "TASKS_DELETED",
    "LABEL_LINK_CREATED", "LABEL_LINK_UPDATED", "LABEL_LINK_DELETED", "REVIEW_CREATED", "REVIEW_UPDATED",
    "REVIEWS_DELETED",
})


@dataclass(frozen=True)
class WebhookReply:
    status_code: int
    body: dict[str, Any]
    handling: str  # for metrics: acknowledged, recorded, ignored, rejected


class TrainingHook(Protocol):
    def start_training(self, project_id: int, event: dict[str, Any]) -> dict[str, Any]:
        """Start (or queue) training for the project; must return within milliseconds.

        A reply with ``"http_status"`` (e.g. 409: a job is already running) is answered with
        that status code; the key itself is not sent.
        """


class RecordOnlyTraining:
    """A hook that only remembers the request (for tests and backends without training)."""

    def __init__(self, store: BackendStore) -> None:
        self._store = store

    def start_training(self, project_id: int, event: dict[str, Any]) -> dict[str, Any]:
        request_id = self._store.record_event(START_TRAINING, project_id, event)
        return {
            "status": "acknowledged",
            "training": "recorded",
            "request_id": request_id,
            "detail": "training request recorded; this backend version does not train yet",
        }


def project_id_of(event: dict[str, Any]) -> int | None:
    """Webhook bodies carry the project as a serialized object (or, from older servers, an id).

    None when the body names no project or no valid id (``project_ids``: one parser for every route).
    """
    from .project_ids import ProjectIdError, parse_project_id

    project = event.get("project")
    if isinstance(project, dict):
        project = project.get("id")
    try:
        return parse_project_id(project)
    except ProjectIdError:
        return None


def handle_event(event: Any, *, store: BackendStore, training: TrainingHook) -> WebhookReply:
    if not isinstance(event, dict):
        return WebhookReply(400, {"error": "webhook body must be a JSON object with an 'action'"}, "rejected")
    action = event.get("action")
    if not isinstance(action, str) or not action:
        return WebhookReply(400, {"error": "webhook body has no 'action'"}, "rejected")
    project_id = project_id_of(event)

    if action not in ANNOTATION_ACTIONS and action not in OTHER_KNOWN_ACTIONS and action != START_TRAINING:
        log.warning("webhook: unknown action %r ignored", action[:64])
        return WebhookReply(400, {"error": f"unknown webhook action {action[:64]!r}"}, "rejected")
    if project_id is None:
        return WebhookReply(400, {"error": f"{action}: the body names no project"}, "rejected")
    if not store.is_known_project(project_id):
        # Not ours: this backend never answered /setup for that project.
        return WebhookReply(200, {"status": "ignored", "action": action,
                                  "reason": f"project {project_id} was never set up on this backend"}, "ignored")
    if action == START_TRAINING:
        body = dict(training.start_training(project_id, event))
        code = int(body.pop("http_status", 200))
        log.info("project %s: START_TRAINING %s", project_id, body.get("status"))
        return WebhookReply(code, {"action": action, "project": project_id, **body},
                            "acknowledged" if code < 400 else "refused")
    if action in ANNOTATION_ACTIONS:
        event_id = store.record_event(action, project_id, event)
        reply = {"status": "recorded", "action": action, "project": project_id, "event_id": event_id}
        counted = getattr(training, "annotation_recorded", None)
        if counted is not None:
            try:
                started = counted(project_id, action)
            except Exception:  # auto-train must never fail the webhook
                log.exception("project %s: auto-train check failed", project_id)
                started = None
            if started is not None:
                reply["training"] = {k: v for k, v in started.items() if k != "http_status"}
        return WebhookReply(200, reply, "recorded")
    return WebhookReply(200, {"status": "ignored", "action": action, "reason": "nothing to do for this action"},
                        "ignored")
