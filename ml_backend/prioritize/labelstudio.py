"""The Label Studio calls an ordering pass makes: tasks with predictions, prediction scores, the view.

Tasks and predictions go through label-studio-sdk (``LabelStudioApi``); Data Manager views
are sent as plain JSON (``POST/PATCH /api/dm/views``) so the payload is exactly what
Label Studio 1.23 stores: a PATCH replaces the whole ``data``, so an update sends the
view's existing data back with only title and ordering changed (columns the user hid
stay hidden).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..labelstudio.client import (API_TIMEOUT_S, Connection, LabelStudioApi, LabelStudioApiError, _wrap,
                                 iterate_pages)

SEQUENTIAL = "Sequential sampling"


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


class PriorityApi:
    def __init__(self, api: LabelStudioApi) -> None:
        self.api = api

    @property
    def connection(self) -> Connection:
        return self.api.connection

    def _call(self, action: str, fn, *args, **kwargs):
        return self.api._call(action, fn, *args, **kwargs)

    @property
    def _sdk(self):
        return self.api._sdk

    def _json(self, method: str, path: str, action: str, *, params: dict | None = None,
              body: Any = None) -> Any:
        import httpx

        try:
            headers = self.api.auth_headers()
            response = httpx.request(method, self.connection.url + path, params=params, json=body, headers=headers,
                                     timeout=API_TIMEOUT_S)
        except LabelStudioApiError:
            raise
        except Exception as exc:  # transport errors
            raise _wrap(action, exc) from exc
        if response.status_code >= 400:
            status = response.status_code
            raise LabelStudioApiError(f"{action}: Label Studio answered {status}: {response.text[:300]}",
                                      status=status, transient=status >= 500 or status in (408, 409, 423, 429))
        return response.json() if response.content else None

    # Project -----------------------------------------------------------------------------------
    def project(self, project_id: int) -> ProjectInfo:
        project = self._call(f"read project {project_id}", self._sdk.projects.get, project_id)
        return ProjectInfo(int(project_id), project.model_version or "", project.sampling or SEQUENTIAL,
                           project.label_config or "")

    def set_project_model_version(self, project_id: int, version: str) -> None:
        self.api.set_project_model_version(project_id, version)

    # Tasks and predictions ------------------------------------------------------------------------
    def tasks(self, project_id: int) -> Iterator[ProjectTask]:
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

    # Data Manager views ---------------------------------------------------------------------------
    def views(self, project_id: int) -> list[dict]:
        found = self._json("GET", "/api/dm/views/", f"list views of project {project_id}",
                           params={"project": project_id})
        return [view for view in found or [] if isinstance(view, dict)]

    def create_view(self, project_id: int, data: dict) -> dict:
        return self._json("POST", "/api/dm/views/", f"create a view in project {project_id}",
                          body={"project": project_id, "data": data})

    def update_view(self, view_id: int, project_id: int, data: dict) -> dict:
        return self._json("PATCH", f"/api/dm/views/{int(view_id)}/", f"update view {view_id}",
                          body={"project": project_id, "data": data})
