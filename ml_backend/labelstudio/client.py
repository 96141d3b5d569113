"""The few Label Studio API calls the backend makes, through label-studio-sdk.

Never call these from inside a /setup or /predict request: Label Studio is waiting on
that request and may not have committed what we would ask for (SPEC 7). The backend
calls them from its outbox (ml_backend/server/outbox.py, actions.py), which retries.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..errors import MdsVqaError

log = logging.getLogger(__name__)

API_TIMEOUT_S = 15.0


class LabelStudioApiError(MdsVqaError):
    """A Label Studio API call failed. ``transient``: worth retrying (network, 5xx, 429, lock)."""

    def __init__(self, message: str, *, status: int | None = None, transient: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.transient = transient


@dataclass(frozen=True)
class Connection:
    """Where Label Studio is and the token to use there. The token never appears in repr or logs."""

    url: str
    token: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"Label Studio URL must start with http:// or https://, got {self.url!r}")
        object.__setattr__(self, "url", self.url.rstrip("/"))

    @property
    def netloc(self) -> str:
        return urlsplit(self.url).netloc


def choose_connection(configured_url: str | None, configured_token: str | None,
                      from_setup: Connection | None) -> Connection | None:
    """Which Label Studio to talk to, and with which token; each token goes only where it belongs.

    A configured token (LABEL_STUDIO_API_KEY) is sent only to the configured URL
    (LABEL_STUDIO_URL), never to a host a /setup request names: anyone who can reach the
    backend can send /setup. A token that came with /setup goes back to the host that sent
    it, or to the configured URL (the operator said that is where Label Studio is).
    """
    if configured_url:
        token = configured_token or (from_setup.token if from_setup is not None else None)
        return Connection(configured_url, token) if token else None
    return from_setup


def _wrap(action: str, exc: Exception) -> LabelStudioApiError:
    """SDK and httpx failures as one error type that says whether a retry can help."""
    from label_studio_sdk.core.api_error import ApiError

    if isinstance(exc, ApiError):
        status = exc.status_code
        transient = status is None or status >= 500 or status in (408, 409, 423, 429)
        body = str(exc.body)[:300]
        return LabelStudioApiError(f"{action}: Label Studio answered {status}: {body}", status=status,
                                   transient=transient)
    return LabelStudioApiError(f"{action}: {type(exc).__name__}: {exc}", transient=True)


def iterate_pages(action: str, pager) -> Iterator[Any]:
    """Items of an SDK pager; a failure while fetching a later page becomes a LabelStudioApiError."""
    iterator = iter(pager)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except Exception as exc:
            raise _wrap(action, exc) from exc
        yield item


class LabelStudioApi:
    """A thin, typed face over the SDK client for one connection."""

    def __init__(self, connection: Connection, *, timeout: float = API_TIMEOUT_S) -> None:
        from label_studio_sdk.client import LabelStudio

        self.connection = connection
        self._sdk = LabelStudio(base_url=connection.url, api_key=connection.token, timeout=timeout, max_retries=0)

    def _call(self, action: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LabelStudioApiError:
            raise
        except Exception as exc:  # SDK ApiError, httpx transport errors, pydantic parse errors
            raise _wrap(action, exc) from exc

    def auth_headers(self) -> dict[str, str]:
        """The Authorization header the SDK would send (legacy token, or a fresh JWT access token)."""
        headers = self._call("authenticate", self._sdk._client_wrapper.get_headers)
        return {"Authorization": headers["Authorization"]}

    # ML backends and model_version -------------------------------------------------------
    def ml_backends(self, project_id: int) -> list[Any]:
        return list(self._call(f"list ML backends of project {project_id}", self._sdk.ml.list, project=project_id))

    def set_ml_backend_title(self, backend: Any, title: str) -> None:
        """Rename an ML backend entry without changing anything else about it.

        Label Studio validates a PATCH by calling the backend's /health and /setup with the
        fields sent, so url and project must be sent (a title alone gives a 500, SPEC 7) and,
        for Basic Auth, the auth method and user too; an empty password keeps the stored one.
        """
        auth: dict[str, Any] = {}
        if str(getattr(backend, "auth_method", "NONE") or "NONE") == "BASIC_AUTH":
            auth = {"auth_method": "BASIC_AUTH", "basic_auth_user": backend.basic_auth_user, "basic_auth_pass": ""}
        self._call(f"rename ML backend {backend.id}", self._sdk.ml.update, backend.id, url=backend.url,
                   project=backend.project, title=title, **auth)

    def project_label_config(self, project_id: int) -> str:
        project = self._call(f"read project {project_id}", self._sdk.projects.get, project_id)
        return project.label_config or ""

    def project_model_version(self, project_id: int) -> str:
        project = self._call(f"read project {project_id}", self._sdk.projects.get, project_id)
        return project.model_version or ""

    def set_project_model_version(self, project_id: int, version: str) -> None:
        self._call(f"set model_version of project {project_id}", self._sdk.projects.update, project_id,
                   model_version=version)

    # Predictions and tasks -----------------------------------------------------------------
    def task_has_prediction(self, task_id: int, model_version: str) -> bool:
        predictions = self._call(f"list predictions of task {task_id}", self._sdk.predictions.list, task=task_id)
        return any(p.model_version == model_version for p in predictions)

    def create_prediction(self, task_id: int, prediction: dict[str, Any]) -> None:
        self._call(f"store prediction for task {task_id}", self._sdk.predictions.create, task=task_id,
                   result=prediction["result"], score=prediction["score"],
                   model_version=prediction["model_version"])

    def tasks_lacking_prediction(self, project_id: int, model_version: str) -> Iterator[tuple[int, dict]]:
        """(task id, task data) of every task without a prediction of this version."""
        # resolve_uri=False: the raw task data, exactly as /predict receives it (same media cache keys)
        pager = self._call(f"list tasks of project {project_id}", self._sdk.tasks.list, project=project_id,
                           fields="all", page_size=100, resolve_uri=False)
        for task in iterate_pages(f"list tasks of project {project_id}", pager):
            versions = {p.model_version for p in (task.predictions or [])}
            if model_version not in versions:
                yield int(task.id), dict(task.data or {})

    def annotated_tasks(self, project_id: int) -> Iterator[tuple[int, dict, list[dict]]]:
        """(task id, raw task data, annotations) of every task with at least one completed annotation.

        Label Studio filters on its ``total_annotations`` column, which leaves out skipped
        ("cancelled") annotations; the annotation list itself still holds them (flag
        ``was_cancelled``), so callers must skip those too.
        """
        query = json.dumps({"filters": {"conjunction": "and", "items": [
            {"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0}]}})
        pager = self._call(f"list annotated tasks of project {project_id}", self._sdk.tasks.list,
                           project=project_id, fields="all", query=query, page_size=100, resolve_uri=False)
        for task in iterate_pages(f"list annotated tasks of project {project_id}", pager):
            annotations = [a for a in (getattr(task, "annotations", None) or []) if isinstance(a, dict)]
            yield int(task.id), dict(task.data or {}), annotations

    # Webhooks ----------------------------------------------------------------------------------
    def webhooks(self, project_id: int) -> list[Any]:
        return list(self._call(f"list webhooks of project {project_id}", self._sdk.webhooks.list,
                               project=str(project_id)))

    def set_webhook_headers(self, webhook_id: int, headers: dict[str, str]) -> None:
        self._call(f"update webhook {webhook_id}", self._sdk.webhooks.update, webhook_id, headers=headers)


_apis: dict[Connection, LabelStudioApi] = {}
_apis_lock = threading.Lock()


def api_for(connection: Connection) -> LabelStudioApi:
    """One SDK client (and its connection pool, its JWT access token) per connection, shared by threads."""
    with _apis_lock:
        api = _apis.get(connection)
        if api is None:
            if len(_apis) >= 32:  # tokens rotate; do not keep every client ever made
                _apis.pop(next(iter(_apis)))
            api = _apis[connection] = LabelStudioApi(connection)
        return api
