"""What the backend sends to Label Studio, as outbox actions: each kind's policy and handler.

| kind     | key                | does                                                      | after the last retry |
| -------- | ------------------ | --------------------------------------------------------- | -------------------- |
| sync     | project            | backend title = model version, project model_version,     | dropped (next /setup |
|          |                    | webhook secret header installed                           | asks again)          |
| push     | task:model version | posts one prediction unless the task has one of it        | never: retried at    |
|          |                    |                                                           | the last delay       |
| backfill | project:version    | queues every task lacking a prediction; results -> push   | dropped              |
| priority | project            | one ordering pass (debounced)                             | dropped              |

Handlers never receive a token: payloads are JSON on disk, so they hold project ids, and
the connection is looked up when the action runs (settings first, then what /setup sent,
``ml_backend.labelstudio.client.choose_connection``). Nothing is called from inside a
/setup or /predict request: Label Studio is waiting on it (SPEC 7), hence the small
debounce of sync and backfill.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..labelstudio.client import Connection, LabelStudioApi, LabelStudioApiError, api_for
from ..labelstudio.config import ProjectConfig, parse_label_config
from .outbox import ActionKind, RetryLater
from .outbox_state import ActionPolicy

log = logging.getLogger(__name__)

SYNC = ActionPolicy("sync", debounce_s=0.5, retry_delays_s=(1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0))
PUSH = ActionPolicy("push", retry_delays_s=(1.0, 2.0, 5.0, 10.0, 30.0, 60.0), retry_forever=True)
BACKFILL = ActionPolicy("backfill", lane="slow", debounce_s=1.0, retry_delays_s=(5.0, 15.0, 60.0, 120.0))


def priority_policy(debounce_s: float) -> ActionPolicy:
    """Ordering passes: ``debounce_s`` after the latest ask, at most 5 x that after the first."""
    return ActionPolicy("priority", lane="slow", debounce_s=debounce_s, max_wait_s=5.0 * debounce_s,
                        retry_delays_s=(2.0, 5.0, 15.0, 30.0, 60.0, 120.0))


class BackendNotListedError(LabelStudioApiError):
    """None of the project's ML backends is this process (yet): transient, Label Studio may not have committed it."""


def normalize_url(url: str) -> str:
    return url.strip().rstrip("/").lower()


def post_prediction(api: LabelStudioApi, task_id: int, prediction: dict[str, Any]) -> bool:
    """Store one prediction unless the task already has one of its model version. True if posted."""
    if api.task_has_prediction(task_id, str(prediction["model_version"])):
        return False
    api.create_prediction(task_id, prediction)
    return True


class ProjectSync:
    """Make Label Studio's view of this backend right (SPEC 7): title, model_version, webhook header.

    Label Studio sets a project's ``model_version`` to the ML backend's *title*, so the title
    is renamed to the model version (PATCH with url + project + title: a title alone gives a
    500), then the project's model_version; with webhook protection on, our secret header is
    added to the webhook Label Studio created for us without credentials.
    """

    def __init__(self, *, instance_id: str, public_url: str | None, webhook_header: tuple[str, str] | None) -> None:
        self.instance_id = instance_id
        self.public_url = public_url
        self.webhook_header = webhook_header

    def sync(self, api: LabelStudioApi, project_id: int, version: str) -> None:
        ours = self.find_our_backend(api, project_id)
        if ours.title != version:
            api.set_ml_backend_title(ours, version)
            log.info("project %s: ML backend %s renamed to the model version %s", project_id, ours.id, version)
        if api.project_model_version(project_id) != version:
            api.set_project_model_version(project_id, version)
            log.info("project %s: model_version set to %s", project_id, version)
        if self.webhook_header is not None:
            self._protect_webhook(api, project_id, ours)

    def find_our_backend(self, api: LabelStudioApi, project_id: int) -> Any:
        backends = api.ml_backends(project_id)
        if not backends:
            raise BackendNotListedError(f"project {project_id} has no ML backend yet")
        if self.public_url:
            wanted = normalize_url(self.public_url)
            matches = [b for b in backends if normalize_url(b.url) == wanted]
            if matches:
                return matches[0]
            raise BackendNotListedError(f"no ML backend of project {project_id} has the URL MDSVQA_PUBLIC_URL")
        for backend in backends:
            if self._answers_as_us(backend.url):
                return backend
        if len(backends) == 1:
            return backends[0]
        raise BackendNotListedError(
            f"project {project_id} has {len(backends)} ML backends and none answered /health with our instance "
            "id; set MDSVQA_PUBLIC_URL to the URL Label Studio uses for this backend", transient=False)

    def _answers_as_us(self, url: str) -> bool:
        """Ask the backend at url for its instance id (our /health is public and instant)."""
        import httpx

        try:
            response = httpx.get(url.rstrip("/") + "/health", timeout=2.0)
            return bool(response.json().get("instance_id") == self.instance_id)
        except Exception:  # noqa: BLE001 - any other answer is "not us"
            return False

    def _protect_webhook(self, api: LabelStudioApi, project_id: int, backend: Any) -> None:
        assert self.webhook_header is not None
        name, value = self.webhook_header
        hook_url = normalize_url(backend.url) + "/webhook"
        for hook in api.webhooks(project_id):
            if normalize_url(hook.url) != hook_url:
                continue
            headers = dict(hook.headers or {}) if isinstance(hook.headers, dict) else {}
            if headers.get(name) != value:
                headers[name] = value
                api.set_webhook_headers(hook.id, headers)
                log.info("project %s: webhook %s now carries the backend's webhook secret header", project_id,
                         hook.id)


class LabelStudioActions:
    """The handlers, bound to the service's parts; ``kinds()`` is what the outbox runs."""

    def __init__(self, *, connection_for: Callable[[int | None], Connection | None],
                 config_for: Callable[[int], ProjectConfig | None], project_sync: ProjectSync,
                 backfill: Callable[[LabelStudioApi, int, ProjectConfig, str], None],
                 priority_pass: Callable[[int, Connection], Any], priority_debounce_s: float,
                 on_push: Callable[[str], None] = lambda _result: None) -> None:
        self._connection_for = connection_for
        self._config_for = config_for
        self._sync = project_sync
        self._backfill = backfill
        self._priority_pass = priority_pass
        self._priority_debounce_s = priority_debounce_s
        self._on_push = on_push

    def kinds(self) -> dict[str, ActionKind]:
        return {
            "sync": ActionKind(SYNC, self.sync),
            "push": ActionKind(PUSH, self.push),
            "backfill": ActionKind(BACKFILL, self.backfill),
            "priority": ActionKind(priority_policy(self._priority_debounce_s), self.priority),
        }

    def _api(self, project_id: int | None) -> LabelStudioApi:
        connection = self._connection_for(project_id)
        if connection is None:
            raise RetryLater(f"no Label Studio URL and token known for project {project_id} yet (set "
                             "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, or wait for Label Studio's next /setup)",
                             delay=30.0)
        return api_for(connection)

    # handlers (key, payload) ------------------------------------------------------------------
    def sync(self, key: str, payload: dict[str, Any]) -> None:
        self._sync.sync(self._api(int(payload["project"])), int(payload["project"]), str(payload["version"]))

    def push(self, key: str, payload: dict[str, Any]) -> None:
        project = payload.get("project")
        posted = post_prediction(self._api(project if isinstance(project, int) else None), int(payload["task"]),
                                 dict(payload["prediction"]))
        self._on_push("posted" if posted else "already_present")

    def backfill(self, key: str, payload: dict[str, Any]) -> None:
        project_id = int(payload["project"])
        api = self._api(project_id)
        config = self._config_for(project_id) or parse_label_config(api.project_label_config(project_id))
        self._backfill(api, project_id, config, str(payload["version"]))

    def priority(self, key: str, payload: dict[str, Any]) -> None:
        project_id = int(payload["project"])
        connection = self._connection_for(project_id)
        if connection is None:
            raise RetryLater(f"no Label Studio connection known for project {project_id} yet", delay=30.0)
        self._priority_pass(project_id, connection)


def push_payload(task_id: int, project_id: int | None, prediction: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The outbox key and payload of one prediction push (one per task and model version)."""
    return f"{task_id}:{prediction['model_version']}", {"task": task_id, "project": project_id,
                                                          "prediction": prediction}
