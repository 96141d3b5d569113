"""From the video reference in a task to a local file the scorer can read.

Label Studio task data holds uploads (``/data/upload/<project>/<name>``), local-files
URLs (``/data/local-files/?d=<path>``), cloud URIs (``s3://``, ``gs://``,
``azure-blob://``) or plain http(s) URLs. We follow label-studio-sdk's rules and use
its helpers for the parts that must match Label Studio exactly (local-files paths,
presign URL encoding, token headers), but do not call its ``get_local_path``: that
caches every file forever under ~/.cache/label-studio, holds the whole file in memory
and has no time limit, so one hanging media server would block scoring for good.
Here a download streams into a temporary file with a size and a time limit, and the
file is removed once scored.
"""

from __future__ import annotations

import logging
import os
import posixpath
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import MdsVqaError
from .client import Connection

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0
STALE_DOWNLOAD_S = 24 * 3600.0


class MediaError(MdsVqaError):
    """The task's video could not be fetched. Fetch failures are never cached: a retry may work."""


class UnsupportedMediaError(MediaError):
    """The task data holds no video reference we know how to read."""


class MediaNotFoundError(MediaError):
    """The server answered 404 (or a local file is missing)."""


class MediaAccessDeniedError(MediaError):
    """The server answered 401/403: token or permissions are wrong."""


class MediaTooLargeError(MediaError):
    """The file is larger than MDSVQA_MEDIA_MAX_BYTES."""


class MediaTimeoutError(MediaError):
    """The download took longer than MDSVQA_MEDIA_TIMEOUT_S or the server stopped answering."""


class MediaDownloadError(MediaError):
    """Any other transport or HTTP failure."""


def describe(ref: str) -> str:
    """A reference safe for logs: absolute URLs lose query strings and credentials (presigned tokens)."""
    parts = urlsplit(ref)
    if parts.scheme in ("http", "https"):
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return f"{parts.scheme}://{host}{parts.path}" + ("?..." if parts.query else "")
    return ref


def is_label_studio_relative(ref: str) -> bool:
    return ref.startswith("/") or ref.startswith("upload/")


def media_key(ref: str, connection: Connection | None) -> str:
    """Identity of a video reference for the backend's score store.

    Relative references belong to one Label Studio instance, so they are made absolute.
    """
    from label_studio_sdk._extensions.label_studio_tools.core.utils.io import is_cloud_storage_uri

    if is_cloud_storage_uri(ref) or ref.startswith(("http://", "https://")):
        return ref
    if is_label_studio_relative(ref):
        ref = _normalize_upload(ref)
        return f"{connection.url}{ref}" if connection else ref
    return ref


def _normalize_upload(ref: str) -> str:
    if ref.startswith("upload/"):
        return "/data/" + ref
    if ref.startswith("/upload/"):
        return "/data" + ref
    return ref


@dataclass
class LocalMedia:
    """A file the scorer can read; ``release()`` removes it when we downloaded it."""

    path: Path
    temporary: bool
    size: int

    def release(self) -> None:
        if self.temporary:
            self.path.unlink(missing_ok=True)


class MediaResolver:
    def __init__(self, download_dir: Path, *, max_bytes: int, timeout_s: float,
                 local_files_root: Path | None = None) -> None:
        import httpx

        self.download_dir = Path(download_dir)
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.local_files_root = Path(local_files_root).resolve() if local_files_root else None
        read = min(READ_TIMEOUT_S, timeout_s)
        self._http = httpx.Client(
            timeout=httpx.Timeout(connect=min(CONNECT_TIMEOUT_S, timeout_s), read=read, write=read, pool=read),
            follow_redirects=True,  # httpx drops Authorization on redirects to another host
        )
        self._remove_stale_downloads()

    def _remove_stale_downloads(self) -> None:
        """Files a killed process left behind (live ones are minutes old at most)."""
        if not self.download_dir.is_dir():
            return
        cutoff = time.time() - STALE_DOWNLOAD_S
        for leftover in self.download_dir.glob("media-*"):
            try:
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()
            except OSError:
                pass

    def close(self) -> None:
        self._http.close()

    # --------------------------------------------------------------------------------------
    def fetch(self, ref: object, *, task_id: int | None, connection: Connection | None) -> LocalMedia:
        """Local file for ``ref``; raises a MediaError subclass that says what went wrong."""
        from label_studio_sdk._extensions.label_studio_tools.core.utils.io import (
            encode_presign_fileuri, is_cloud_storage_uri)

        if not isinstance(ref, str) or not ref.strip():
            raise UnsupportedMediaError(f"the video field holds {type(ref).__name__} {ref!r:.80}, not a URL")
        ref = _normalize_upload(ref.strip())

        if ref.startswith("/data/") and "?d=" in ref:
            local = self._local_storage_file(ref)
            if local is not None:
                return local
            return self._download(self._on_label_studio(ref, connection), connection, ref)
        if ref.startswith("/data/upload/"):
            upload_key = ref[len("/data/"):]
            try:
                return self._download(self._on_label_studio(ref, connection), connection, ref)
            except (MediaNotFoundError, MediaDownloadError):
                # Cloud-backed default storage serves uploads only through the storage proxy.
                proxy = f"/storage-data/uploaded/?filepath={upload_key}"
                return self._download(self._on_label_studio(proxy, connection), connection, ref)
        if is_cloud_storage_uri(ref):
            if task_id is None:
                raise UnsupportedMediaError(f"{ref}: cloud storage media needs the task id to be presigned")
            presign = f"/tasks/{int(task_id)}/presign/?fileuri={encode_presign_fileuri(ref)}"
            return self._download(self._on_label_studio(presign, connection), connection, ref)
        if ref.startswith(("http://", "https://")):
            return self._download(ref, connection, ref)
        if ref.startswith("/"):
            return self._download(self._on_label_studio(ref, connection), connection, ref)
        raise UnsupportedMediaError(
            f"{describe(ref)!r} is not a Label Studio upload, local-files URL, cloud URI or http(s) URL"
        )

    # --------------------------------------------------------------------------------------
    @staticmethod
    def _on_label_studio(path: str, connection: Connection | None) -> str:
        if connection is None:
            raise MediaAccessDeniedError(
                f"{path}: a Label Studio media path, but no Label Studio URL and token are known; "
                "connect the backend from Label Studio (/setup sends them) or set LABEL_STUDIO_URL "
                "and LABEL_STUDIO_API_KEY"
            )
        return connection.url + path

    def _local_storage_file(self, ref: str) -> LocalMedia | None:
        """Read local-files media from disk when we share the directory with Label Studio."""
        from label_studio_sdk._extensions.label_studio_tools.core.utils.io import (
            local_files_resolver, resolve_local_storage_file, safe_build_path)

        if self.local_files_root is None:
            return None
        root = str(self.local_files_root)

        def resolve(relative: str) -> str | None:
            try:
                return safe_build_path(root, posixpath.normpath(relative).lstrip("/"))
            except ValueError:
                return None  # a path outside the root

        try:
            with local_files_resolver(resolve):
                path = resolve_local_storage_file(ref)
        except FileNotFoundError as exc:
            raise MediaNotFoundError(f"{ref}: {exc}") from exc
        if path is None or not os.path.isfile(path):
            raise MediaNotFoundError(f"{ref}: no such file under MDSVQA_LOCAL_FILES_ROOT")
        return LocalMedia(Path(path), temporary=False, size=os.path.getsize(path))

    def _headers_for(self, url: str, connection: Connection | None) -> dict[str, str]:
        """Token only for Label Studio's own host, as label-studio-sdk does."""
        if connection is None or urlsplit(url).netloc != connection.netloc:
            return {}
        from .client import api_for

        return api_for(connection).auth_headers()

    def _download(self, url: str, connection: Connection | None, ref: str) -> LocalMedia:
        import httpx

        shown = describe(ref)
        started = time.monotonic()
        self.download_dir.mkdir(parents=True, exist_ok=True)
        suffix = Path(urlsplit(ref).path).suffix[:10] or ".bin"
        handle = tempfile.NamedTemporaryFile(dir=self.download_dir, prefix="media-", suffix=suffix, delete=False)
        path = Path(handle.name)
        size = 0
        try:
            with handle, self._http.stream("GET", url, headers=self._headers_for(url, connection)) as response:
                if response.status_code in (401, 403):
                    raise MediaAccessDeniedError(
                        f"{shown}: server answered {response.status_code}; check the Label Studio token "
                        "(LABEL_STUDIO_API_KEY) or the media server's permissions")
                if response.status_code == 404:
                    raise MediaNotFoundError(f"{shown}: server answered 404 (file removed or wrong URL)")
                if response.status_code >= 400:
                    raise MediaDownloadError(f"{shown}: server answered {response.status_code}")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > self.max_bytes:
                    raise MediaTooLargeError(f"{shown}: {int(declared)} bytes, over the limit of {self.max_bytes}")
                for chunk in response.iter_bytes(_CHUNK):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise MediaTooLargeError(f"{shown}: more than {self.max_bytes} bytes")
                    if time.monotonic() - started > self.timeout_s:
                        raise MediaTimeoutError(f"{shown}: download took over {self.timeout_s:g} s")
                    handle.write(chunk)
        except httpx.TimeoutException as exc:
            path.unlink(missing_ok=True)
            raise MediaTimeoutError(f"{shown}: server stopped answering ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            path.unlink(missing_ok=True)
            raise MediaDownloadError(f"{shown}: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        log.debug("downloaded %s (%d bytes, %.2f s)", shown, size, time.monotonic() - started)
        return LocalMedia(path, temporary=True, size=size)
