"""A real Label Studio 1.23.2 and a real ``mdsvqa serve`` as subprocesses, for the end-to-end suite.

Label Studio starts once per test session (about 30 s on a fresh data directory), offline,
on loopback, on a free port, with a temporary data directory; it is stopped at the end.
Its binary: $MDSVQA_LABEL_STUDIO_BIN, else the venv that ml_backend.demo.processes installs
($MDSVQA_LABEL_STUDIO_VENV or .cache/labelstudio-venv; installed there on first use, ~70 s).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from ml_backend.demo.processes import ManagedProcess, free_port, label_studio_binary, label_studio_environment

REPO = Path(__file__).resolve().parents[1]
LS_USER, LS_PASSWORD = "e2e@mdsvqa.invalid", "e2e-password-1"  # the test Label Studio's one user (browser login)


def wait_for(condition, *, timeout: float, what: str, interval: float = 0.25, process=None, log: Path | None = None):
    """Poll until condition() is truthy; fail with the process log when it exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except (requests.RequestException, ValueError, KeyError):
            value = None
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {process.returncode}\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}\n{_tail(log)}")
        time.sleep(interval)


def _tail(log: Path | None, lines: int = 40) -> str:
    if log is None or not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def stop_process(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """Stop a process group we started, politely first (the demo's own stop)."""
    ManagedProcess("process", process, Path(os.devnull)).stop(timeout)


@dataclass
class LabelStudio:
    url: str
    token: str
    process: subprocess.Popen
    log: Path
    session: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        self.session.headers["Authorization"] = f"Token {self.token}"

    def api(self, method: str, path: str, *, expect: int | tuple = (200, 201, 204), **kwargs):
        response = self.session.request(method, self.url + path, timeout=120, **kwargs)
        allowed = (expect,) if isinstance(expect, int) else expect
        if response.status_code not in allowed:
            raise AssertionError(f"{method} {path} -> {response.status_code}: {response.text[:500]}")
        return response.json() if response.content and "json" in response.headers.get("Content-Type", "") else None

    def create_project(self, title: str, label_config: str) -> int:
        return self.api("POST", "/api/projects", json={"title": title, "label_config": label_config})["id"]

    def upload(self, project_id: int, files: list[Path]) -> list[int]:
        """Import files as tasks; returns the new task ids in the order of ``files``."""
        before = {t["id"] for t in self.tasks(project_id)}
        # one form field per file: Label Studio reads request.FILES by key
        handles = [(f"file{i}", (path.name, path.open("rb"))) for i, path in enumerate(files)]
        try:
            self.api("POST", f"/api/projects/{project_id}/import", files=handles)
        finally:
            for _, (_, handle) in handles:
                handle.close()
        new = {t["data"]["video"]: t["id"] for t in self.tasks(project_id) if t["id"] not in before}
        assert len(new) == len(files), f"uploaded {len(files)} files, got {len(new)} tasks"
        ids = []
        for path in files:  # uploads are stored as /data/upload/<project>/<random>-<name>
            (task_id,) = [i for url, i in new.items() if url.endswith("-" + path.name)]
            ids.append(task_id)
        return ids

    def import_tasks(self, project_id: int, tasks: list[dict]) -> list[int]:
        before = {t["id"] for t in self.tasks(project_id)}
        self.api("POST", f"/api/projects/{project_id}/import", json=tasks)
        return sorted(t["id"] for t in self.tasks(project_id) if t["id"] not in before)

    def tasks(self, project_id: int, view: int | None = None) -> list[dict]:
        params = {"project": project_id, "page_size": 1000, "fields": "all"}
        if view is not None:
            params["view"] = view
        return self.api("GET", "/api/tasks", params=params)["tasks"]

    def predictions(self, project_id: int) -> list[dict]:
        return self.api("GET", "/api/predictions", params={"project": project_id})

    def project(self, project_id: int) -> dict:
        return self.api("GET", f"/api/projects/{project_id}")

    def dm_action(self, project_id: int, action: str, items: dict | None = None) -> dict:
        return self.api("POST", "/api/dm/actions", params={"id": action, "project": project_id},
                        json={"selectedItems": items or {"all": True, "excluded": []}})


def start_label_studio(workdir: Path) -> LabelStudio:
    binary = label_studio_binary()
    port = free_port()
    token = "mdsvqa-e2e-" + os.urandom(8).hex()
    data = workdir / "data"
    media_root = workdir / "local-media"
    media_root.mkdir(parents=True, exist_ok=True)
    env = label_studio_environment(port, media_root, "mdsvqa-e2e-" + os.urandom(16).hex())
    log = workdir / "label-studio.log"
    command = [str(binary), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
               "--data-dir", str(data), "--username", LS_USER, "--password", LS_PASSWORD,
               "--user-token", token, "--enable-legacy-api-token"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(url + "/health", timeout=2).json().get("status") == "UP",
                 timeout=240, what="Label Studio /health", process=process, log=log)
        ls = LabelStudio(url, token, process, log)
        wait_for(lambda: ls.session.get(url + "/api/projects", timeout=5).status_code == 200,
                 timeout=60, what="Label Studio API with the test token", process=process, log=log)
        ls.media_root = media_root  # type: ignore[attr-defined]
        return ls
    except BaseException:
        stop_process(process)
        raise


@dataclass
class Backend:
    url: str
    port: int
    process: subprocess.Popen
    log: Path
    auth: tuple[str, str] | None

    def health(self) -> dict:
        return requests.get(self.url + "/health", timeout=2).json()

    def metrics(self) -> str:
        return requests.get(self.url + "/metrics", auth=self.auth, timeout=5).text

    def metric(self, sample: str) -> float:
        """One sample's value, e.g. 'mdsvqa_videos_scored_total{result="ok"}'; 0 when absent."""
        for line in self.metrics().splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


def start_backend(*, base: Path, adapter: Path, cache_dir: Path, log: Path, port: int | None = None,
                  auth: tuple[str, str] | None = None, extra_env: dict | None = None) -> Backend:
    """``mdsvqa serve`` as a real subprocess with the tiny model; waits for the model."""
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "MDSVQA_"))}
    env.update({
        "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        "MDSVQA_CACHE_DIR": str(cache_dir),
        "MDSVQA_OFFLINE": "true",
        "HF_HUB_OFFLINE": "1",
        "MDSVQA_THREADS": "4",
        "MDSVQA_MEDIA_TIMEOUT_S": "3",
        # versions, jobs: never the default ./mdsvqa-models inside the repository
        "MDSVQA_MODEL_DIR": str(cache_dir.parent / "models"),
        # the tiny model's own vision-tower features (CLIP's weights are not here offline, and RN101 on every
        # frame would be slow on a CPU); their lambda must be explicit
        "MDSVQA_FEATURES_EXTRACTOR": "vision",
        "MDSVQA_PRIORITY_DIVERSITY_LAMBDA": "0.25",
    })
    if auth:
        env["MDSVQA_BASIC_AUTH_USER"], env["MDSVQA_BASIC_AUTH_PASSWORD"] = auth
    env.update(extra_env or {})
    command = [sys.executable, "-m", "ml_backend.cli", "serve", "--base", str(base), "--adapter", str(adapter),
               "--host", "127.0.0.1", "--port", str(port)]
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                   start_new_session=True)
    backend = Backend(f"http://127.0.0.1:{port}", port, process, log, auth)
    try:
        wait_for(lambda: backend.health()["model"] == "ready", timeout=180, what="backend model ready",
                 process=process, log=log)
    except BaseException:
        stop_process(process)
        raise
    return backend


def read_backend_events(cache_dir: Path, action: str) -> list[dict]:
    """The backend's recorded webhook events, read from its store (SQLite, read-only)."""
    import sqlite3

    db = sqlite3.connect(f"file:{cache_dir / 'backend.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute("SELECT project_id, payload FROM webhook_events WHERE action=?", (action,)).fetchall()
    finally:
        db.close()
    return [{"project_id": r[0], "payload": json.loads(r[1])} for r in rows]
