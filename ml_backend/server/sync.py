"""Keeping Label Studio's view of this backend right, in the background after /setup.

Label Studio sets a project's ``model_version`` to the ML backend's *title*, not to the
version /setup returns; until both match, the "Prediction score" column stays empty and
uncertainty sampling is random (SPEC 7). We therefore make our backend entry's title
equal to the model version (PATCH with url + project + title: a title alone gives a 500),
then the project's model_version. When webhook protection is on, we also add our secret
header to the webhook Label Studio created for us (it is created without credentials).

All of this runs on a background thread with retries: calling Label Studio from inside
/setup deadlocks or times out, because Label Studio is waiting on that very request and
has not committed the backend entry yet.
"""

from __future__ import annotations

import logging
import queue as stdqueue
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..labelstudio.client import Connection, LabelStudioApi, LabelStudioApiError, api_for

log = logging.getLogger(__name__)

FIRST_DELAY_S = 0.5
RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)


class BackendNotListedError(LabelStudioApiError):
    """None of the project's ML backends is this process (yet)."""


@dataclass(frozen=True)
class SyncRequest:
    project_id: int
    connection: Connection
    model_version: str


def normalize_url(url: str) -> str:
    return url.strip().rstrip("/").lower()


class ProjectSync:
    def __init__(self, *, instance_id: str, public_url: str | None, webhook_header: tuple[str, str] | None,
                 recheck_s: float) -> None:
        self.instance_id = instance_id
        self.public_url = public_url
        self._webhook_header = webhook_header
        self._recheck_s = recheck_s
        self._queue: stdqueue.Queue[SyncRequest | None] = stdqueue.Queue()
        self._lock = threading.Lock()
        self._last_ok: dict[tuple[int, str], float] = {}
        self._pending: set[tuple[int, str]] = set()
        self._thread: threading.Thread | None = None
        self._probe = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="mdsvqa-sync", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)

    def request(self, project_id: int, connection: Connection, model_version: str, *, force: bool = False) -> bool:
        """Schedule a sync unless one is pending or one succeeded recently. Never blocks.

        ``force``: even if this version was synced recently (a rollback to it: the project has
        moved on since).
        """
        key = (project_id, model_version)
        with self._lock:
            if key in self._pending:
                return False
            last = self._last_ok.get(key)
            if not force and last is not None and time.monotonic() - last < self._recheck_s:
                return False
            self._pending.add(key)
        self._queue.put(SyncRequest(project_id, connection, model_version))
        return True

    def is_synced(self, project_id: int, model_version: str) -> bool:
        with self._lock:
            return (project_id, model_version) in self._last_ok

    # ---------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            key = (item.project_id, item.model_version)
            ok = False
            try:
                ok = self._sync_with_retries(item)
            finally:
                with self._lock:
                    self._pending.discard(key)
                    if ok:
                        self._last_ok[key] = time.monotonic()

    def _sync_with_retries(self, item: SyncRequest) -> bool:
        time.sleep(FIRST_DELAY_S)  # let Label Studio commit what it is doing while it calls us
        for attempt in range(len(RETRY_DELAYS_S) + 1):
            try:
                self.sync_once(api_for(item.connection), item.project_id, item.model_version)
                return True
            except LabelStudioApiError as exc:
                if not exc.transient or attempt == len(RETRY_DELAYS_S):
                    log.error("project %s: cannot set model_version to %s: %s", item.project_id,
                              item.model_version, exc)
                    return False
                delay = RETRY_DELAYS_S[attempt]
                log.info("project %s: model_version sync not done yet (%s); retry in %.1f s", item.project_id,
                         exc, delay)
                time.sleep(delay)
            except Exception:
                log.exception("project %s: model_version sync failed", item.project_id)
                return False
        return False

    def sync_once(self, api: LabelStudioApi, project_id: int, version: str) -> None:
        ours = self.find_our_backend(api, project_id)
        if ours.title != version:
            api.set_ml_backend_title(ours, version)
            log.info("project %s: ML backend %s renamed to the model version %s", project_id, ours.id, version)
        if api.project_model_version(project_id) != version:
            api.set_project_model_version(project_id, version)
            log.info("project %s: model_version set to %s", project_id, version)
        if self._webhook_header is not None:
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
            "id; set MDSVQA_PUBLIC_URL to the URL Label Studio uses for this backend"
        )

    def _answers_as_us(self, url: str) -> bool:
        """Ask the backend at url for its instance id (our /health is public and instant)."""
        import httpx

        try:
            response = httpx.get(url.rstrip("/") + "/health", timeout=2.0)
            return response.json().get("instance_id") == self.instance_id
        except Exception:
            return False

    def _protect_webhook(self, api: LabelStudioApi, project_id: int, backend: Any) -> None:
        name, value = self._webhook_header
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
