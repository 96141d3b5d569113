"""Every Label Studio API call the project makes, through one client with one error mapping.

Typed calls go through label-studio-sdk; the few it does not cover the way Label Studio
1.23 stores them (Data Manager views, file imports, the labeling queue's /next) are plain
JSON through ``request_json`` with the same authentication and the same errors. The
backend, the ordering passes, the training job and the demo all use ``LabelStudioApi``.

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
from pathlib import Path
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


SEQUENTIAL = "Sequential sampling"  # the project sampling under which Label Studio follows a view's order


@dataclass(frozen=True)
class TaskPrediction:
    id: int
    model_version: str
    score: float | None
    result: list[dict]


@dataclass(frozen=True)
class ProjectTask:
    id: int
    data: dict
    labeled: bool  # at least one annotation that was not skipped
    predictions: list[TaskPrediction] = field(default_factory=list)


@dataclass(frozen=True)
class ProjectInfo:
    id: int
    model_version: str
    sampling: str
    label_config: str


def _get(obj: Any, name: str, default: Any = None) -> Any:
    """SDK objects and plain dicts alike (the SDK types some nested items, not others)."""
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _prediction(raw: Any) -> TaskPrediction | None:
    pid = _get(raw, "id")
    if pid is None:
        return None
    score = _get(raw, "score")
    return TaskPrediction(int(pid), str(_get(raw, "model_version") or ""),
                          float(score) if isinstance(score, (int, float)) else None,
                          list(_get(raw, "result") or []))


def http_error(action: str, status: int | None, body: object) -> LabelStudioApiError:
    """The one mapping of an HTTP answer to an error: transient when a retry can help."""
    transient = status is None or status >= 500 or status in (408, 409, 423, 429)
    return LabelStudioApiError(f"{action}: Label Studio answered {status}: {str(body)[:300]}", status=status,
                               transient=transient)


def _wrap(action: str, exc: Exception) -> LabelStudioApiError:
    """SDK and httpx failures as one error type that says whether a retry can help."""
    from label_studio_sdk.core.api_error import ApiError

    if isinstance(exc, ApiError):
        return http_error(action, exc.status_code, exc.body)
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
        self._timeout = timeout
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

    def request_json(self, method: str, path: str, action: str, *, params: dict | None = None, body: Any = None,
                     files: Any = None, missing_ok: bool = False) -> Any:
        """A call the SDK does not make as we need it; same token, same errors (``missing_ok``: 404 -> None)."""
        import httpx

        try:
            response = httpx.request(method, self.connection.url + path, params=params, json=body, files=files,
                                     headers=self.auth_headers(), timeout=self._timeout)
        except LabelStudioApiError:
            raise
        except Exception as exc:  # transport errors
            raise _wrap(action, exc) from exc
        if missing_ok and response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise http_error(action, response.status_code, response.text)
        return response.json() if response.content else None

    # Projects ----------------------------------------------------------------------------------
    def project(self, project_id: int) -> ProjectInfo:
        project = self._call(f"read project {project_id}", self._sdk.projects.get, project_id)
        return ProjectInfo(int(project_id), project.model_version or "", project.sampling or SEQUENTIAL,
                           project.label_config or "")

    def create_project(self, title: str, label_config: str) -> int:
        project = self._call("create a project", self._sdk.projects.create, title=title, label_config=label_config)
        return int(project.id)

    def import_files(self, project_id: int, files: list[Path], *, per_request: int = 10) -> None:
        """Import media files as tasks (one form field per file: Label Studio keys uploads by field)."""
        for start in range(0, len(files), per_request):
            handles = [(f"file{i}", (p.name, p.open("rb"), "video/mp4"))
                       for i, p in enumerate(files[start:start + per_request])]
            try:
                self.request_json("POST", f"/api/projects/{int(project_id)}/import",
                                  f"import files into project {project_id}", files=handles)
            finally:
                for _, (_, handle, _) in handles:
                    handle.close()

    def connect_ml_backend(self, project_id: int, url: str, title: str) -> int:
        backend = self._call(f"connect an ML backend to project {project_id}", self._sdk.ml.create, url=url,
                             project=project_id, title=title, is_interactive=False)
        return int(backend.id)

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
        return self.project(project_id).label_config

    def project_model_version(self, project_id: int) -> str:
        return self.project(project_id).model_version

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

    def tasks(self, project_id: int) -> Iterator[ProjectTask]:
        """Every task with its predictions and whether it is labeled."""
        # resolve_uri=False: the raw task data, exactly as /predict receives it (same media keys)
        pager = self._call(f"list tasks of project {project_id}", self._sdk.tasks.list, project=project_id,
                           fields="all", page_size=500, resolve_uri=False)
        for task in iterate_pages(f"list tasks of project {project_id}", pager):
            predictions = [p for p in map(_prediction, _get(task, "predictions") or []) if p is not None]
            labeled = int(_get(task, "total_annotations") or 0) > 0
            yield ProjectTask(int(_get(task, "id")), dict(_get(task, "data") or {}), labeled, predictions)

    def set_prediction_score(self, prediction_id: int, score: float) -> None:
        self._call(f"update the score of prediction {prediction_id}", self._sdk.predictions.update, prediction_id,
                   score=score)

    def set_task_data(self, task_id: int, data: dict[str, Any]) -> None:
        """Replace a task's ``data`` (the whole dict: Label Studio does not merge it)."""
        self._call(f"update the data of task {task_id}", self._sdk.tasks.update, str(task_id), data=data)

    def tasks_in_view(self, project_id: int, view: int | None = None, *, page_size: int = 10000) -> list[dict]:
        """Tasks as the Data Manager lists them (in ``view``'s order), as plain JSON."""
        params: dict[str, Any] = {"project": project_id, "page_size": page_size, "fields": "all"}
        if view is not None:
            params["view"] = view
        found = self.request_json("GET", "/api/tasks", f"list tasks of project {project_id}", params=params)
        return list((found or {}).get("tasks") or [])

    def next_task(self, project_id: int, view: int) -> dict | None:
        """The task the labeling queue serves next in ``view`` (None when there is none)."""
        return self.request_json("GET", f"/api/projects/{int(project_id)}/next", f"next task of project {project_id}",
                                 params={"view": view}, missing_ok=True)

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

    # Data Manager views (sent as plain JSON: a PATCH replaces the whole ``data``) -------------------
    def views(self, project_id: int) -> list[dict]:
        found = self.request_json("GET", "/api/dm/views/", f"list views of project {project_id}",
                                  params={"project": project_id})
        return [view for view in found or [] if isinstance(view, dict)]

    def dm_columns(self, project_id: int) -> list[dict]:
        """The Data Manager's columns of a project (``/api/dm/columns``), as the frontend gets them."""
        found = self.request_json("GET", "/api/dm/columns/", f"list Data Manager columns of project {project_id}",
                                  params={"project": project_id})
        columns = (found or {}).get("columns") if isinstance(found, dict) else None
        return [column for column in columns or [] if isinstance(column, dict)]

    def create_view(self, project_id: int, data: dict) -> dict:
        return dict(self.request_json("POST", "/api/dm/views/", f"create a view in project {project_id}",
                                      body={"project": project_id, "data": data}))

    def update_view(self, view_id: int, project_id: int, data: dict) -> dict:
        return dict(self.request_json("PATCH", f"/api/dm/views/{int(view_id)}/", f"update view {view_id}",
                                      body={"project": project_id, "data": data}))

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
