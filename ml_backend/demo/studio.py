"""The few Label Studio API calls the demo makes (project, uploads, ML backend, views, queue)."""

from __future__ import annotations

from pathlib import Path

import httpx

from ..errors import MdsVqaError


class StudioError(MdsVqaError):
    pass


class Studio:
    def __init__(self, url: str, token: str) -> None:
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Token {token}"}, timeout=120)

    def _call(self, method: str, path: str, **kwargs):
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise StudioError(f"Label Studio {method} {path} -> {response.status_code}: {response.text[:300]}")
        return response.json() if response.content else None

    def create_project(self, title: str, label_config: str) -> int:
        return self._call("POST", "/api/projects", json={"title": title, "label_config": label_config})["id"]

    def upload(self, project_id: int, files: list[Path]) -> None:
        """Import files as tasks (one form field per file: Label Studio keys uploads by field)."""
        for start in range(0, len(files), 10):
            handles = [(f"file{i}", (p.name, p.open("rb"), "video/mp4")) for i, p in enumerate(files[start:start + 10])]
            try:
                self._call("POST", f"/api/projects/{project_id}/import", files=handles)
            finally:
                for _, (_, handle, _) in handles:
                    handle.close()

    def connect_backend(self, project_id: int, url: str, title: str = "mdsvqa") -> int:
        body = {"url": url, "project": project_id, "title": title, "is_interactive": False}
        return self._call("POST", "/api/ml", json=body)["id"]

    def tasks(self, project_id: int, view: int | None = None) -> list[dict]:
        params = {"project": project_id, "page_size": 10000, "fields": "all"}
        if view is not None:
            params["view"] = view
        return self._call("GET", "/api/tasks", params=params)["tasks"]

    def views(self, project_id: int) -> list[dict]:
        return self._call("GET", "/api/dm/views", params={"project": project_id})

    def next_task(self, project_id: int, view: int) -> dict | None:
        response = self.http.get(f"/api/projects/{project_id}/next", params={"view": view})
        return response.json() if response.status_code == 200 else None

    def project(self, project_id: int) -> dict:
        return self._call("GET", f"/api/projects/{project_id}")

    def close(self) -> None:
        self.http.close()
