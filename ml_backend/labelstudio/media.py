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

Media servers are peers we do not trust:

- ``timeout_s`` bounds the whole download (connect, headers and body), not each read: every
  network read gets a timeout no longer than the time left, so a server that drips a byte
  every few seconds is cut at the deadline.
- Temporary downloads live in a folder of this resolver's own under the download dir
  (``mdsvqa-run-<pid>-<random>/``), holding a ``lock`` file locked with ``flock`` for as long
  as the resolver lives. A resolver starting on the dir removes every such folder whose lock
  nobody holds (a killed process's leftovers) and never touches a live one, so a server and a
  ``mdsvqa score-project`` run can share the dir.
- Local files are read only when their real path (symlinks resolved) is inside
  ``local_files_root``.
- Keys and log lines never carry URL credentials or presigned-URL signatures.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import posixpath
import re
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from ..errors import MdsVqaError
from .client import Connection

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0
STALE_DOWNLOAD_S = 24 * 3600.0  # only for top-level files of the layout before run folders
TEMP_PREFIX = "media-"
RUN_PREFIX = "mdsvqa-run-"
STAGING_PREFIX = ".mdsvqa-new-"
STAGING_STALE_S = 600.0
LOCK_NAME = "lock"


class MediaError(MdsVqaError):
    """The task's video could not be fetched. Fetch failures are never cached: a retry may work."""


class UnsupportedMediaError(MediaError):
    """The task data holds no video reference we know how to read."""


class MediaNotFoundError(MediaError):
    """The server answered 404 (or a local file is missing)."""


class MediaAccessDeniedError(MediaError):
    """The server answered 401/403, or a local path leads outside MDSVQA_LOCAL_FILES_ROOT."""


class MediaTooLargeError(MediaError):
    """The file is larger than MDSVQA_MEDIA_MAX_BYTES."""


class MediaTimeoutError(MediaError):
    """The download took longer than MDSVQA_MEDIA_TIMEOUT_S or the server stopped answering."""


class MediaDownloadError(MediaError):
    """Any other transport or HTTP failure."""


# --- references without secrets ------------------------------------------------------------------

# Query parameters that are credentials or signatures (names compared lower-case).
_SECRET_PARAMS = frozenset({
    "token", "access_token", "id_token", "refresh_token", "auth", "auth_token", "authorization",
    "api_key", "apikey", "api-key", "x-api-key", "password", "passwd", "pwd", "secret", "client_secret",
    "sig", "signature", "jwt", "awsaccesskeyid", "googleaccessid", "hdnts", "hdnea",
})
_SECRET_PREFIXES = ("x-amz-", "x-goog-")  # S3 and GCS v4 signing: all of them change per signing
# Signing details that change each time a URL is signed, dropped when the URL carries a signature
# (S3/GCS v2 and CloudFront: Expires, Policy, Key-Pair-Id).
_SIGNING_PARAMS = frozenset({"expires", "policy", "key-pair-id"})
# Azure SAS fields, dropped when the URL is a SAS (it has both sv and sig).
_AZURE_SAS_PARAMS = frozenset({
    "sv", "ss", "srt", "sp", "se", "st", "spr", "sig", "sr", "sip", "si", "skoid", "sktid", "skt", "ske",
    "sks", "skv", "saoid", "suoid", "scid", "sdd", "ses",
})


def _param_name(piece: str) -> str:
    return unquote_plus(piece.partition("=")[0]).strip().lower()


def _without_secret_params(query: str) -> str:
    """``query`` less its secret parameters; unchanged (same string) when it has none."""
    if not query:
        return query
    pieces = query.split("&")
    names = [_param_name(piece) for piece in pieces]
    signed = any(name in _SECRET_PARAMS or name.startswith(_SECRET_PREFIXES) for name in names)
    if not signed:
        return query
    azure = "sig" in names and "sv" in names

    def secret(name: str) -> bool:
        return (name in _SECRET_PARAMS or name.startswith(_SECRET_PREFIXES) or name in _SIGNING_PARAMS
                or (azure and name in _AZURE_SAS_PARAMS))

    return "&".join(piece for piece, name in zip(pieces, names) if not secret(name))


def _without_secrets(ref: str) -> str:
    """``ref`` without userinfo (``user:password@``) and without secret query parameters.

    Everything else is kept byte for byte (and a reference with no secrets is returned as is),
    so keys of plain URLs stay what they always were. Raises ValueError for an unparseable URL.
    """
    parts = urlsplit(ref)
    netloc = parts.netloc.rpartition("@")[2]
    query = _without_secret_params(parts.query)
    fragment = _without_secret_params(parts.fragment) if "=" in parts.fragment else parts.fragment
    if (netloc, query, fragment) == (parts.netloc, parts.query, parts.fragment):
        return ref
    return urlunsplit(parts._replace(netloc=netloc, query=query, fragment=fragment))


def _digest(ref: str) -> str:
    return hashlib.sha256(ref.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def describe(ref: str) -> str:
    """A reference safe for logs: absolute URLs lose credentials and query strings (presigned tokens);
    relative ones (``/data/local-files/?d=...``) keep their query minus secret parameters."""
    try:
        parts = urlsplit(ref)
        if parts.scheme and parts.netloc:
            host = parts.netloc.rpartition("@")[2]
            if parts.scheme in ("http", "https"):
                host = host.lower()
            return f"{parts.scheme}://{host}{parts.path}" + ("?..." if parts.query else "")
        return _without_secrets(ref)
    except ValueError:
        return f"<unparseable reference sha256:{_digest(ref)}>"


def is_label_studio_relative(ref: str) -> bool:
    return ref.startswith("/") or ref.startswith("upload/")


def media_key(ref: str, connection: Connection | None) -> str:
    """Identity of a video reference for the backend's score store (also logged).

    Relative references belong to one Label Studio instance, so they are made absolute.

    A key never holds secrets, and one video keeps one key however its URL was signed:

    - userinfo (``https://user:password@host/...``) is dropped;
    - query parameters that are credentials or signatures are dropped, value and name:
      ``token``, ``access_token``, ``sig``, ``signature``, ``api_key``, ``password`` and the like,
      every ``X-Amz-*`` (S3 SigV4, including ``X-Amz-Security-Token``) and ``X-Goog-*`` (GCS V4)
      parameter, ``AWSAccessKeyId``/``GoogleAccessId``; and, when one of those is present, the
      signing details ``Expires``, ``Policy`` and ``Key-Pair-Id`` (S3/GCS V2, CloudFront); and for an
      Azure SAS (``sv`` and ``sig``) all its SAS fields (``se``, ``st``, ``sp``, ...).
      A signature changes every time a URL is signed, so it is left out entirely rather than
      digested: two presigned URLs of the same object give the same key;
    - scheme, host, port, path, the other query parameters (in their order and encoding) and the
      fragment are kept as written, so different objects keep different keys and a URL without
      secrets is its own key.

    An unparseable URL gets ``unparsed:<sha256 prefix>``, stable and free of its text.
    """
    from label_studio_sdk._extensions.label_studio_tools.core.utils.io import is_cloud_storage_uri

    if not is_cloud_storage_uri(ref) and is_label_studio_relative(ref):
        ref = _normalize_upload(ref)
        if connection:
            ref = f"{connection.url}{ref}"
    try:
        return _without_secrets(ref)
    except ValueError:
        return f"unparsed:{_digest(ref)}"


def _normalize_upload(ref: str) -> str:
    if ref.startswith("upload/"):
        return "/data/" + ref
    if ref.startswith("/upload/"):
        return "/data" + ref
    return ref


# --- a deadline for every network operation ------------------------------------------------------

_deadline = threading.local()


@contextmanager
def download_deadline(seconds: float) -> Iterator[float]:
    """Within the block, this thread's network operations end ``seconds`` from now at the latest."""
    at = time.monotonic() + seconds
    outer = getattr(_deadline, "at", None)
    _deadline.at = at if outer is None else min(at, outer)
    try:
        yield _deadline.at
    finally:
        _deadline.at = outer


def _clamped(timeout: float | None, kind: str) -> float | None:
    """``timeout`` cut to the time left before this thread's download deadline."""
    at = getattr(_deadline, "at", None)
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        import httpcore

        raise {"connect": httpcore.ConnectTimeout, "write": httpcore.WriteTimeout}.get(
            kind, httpcore.ReadTimeout)("download deadline passed")
    return left if timeout is None else min(timeout, left)


def _deadline_backend(inner):
    """An httpcore network backend whose every connect, read and write ends by the deadline."""
    import httpcore

    class Stream(httpcore.NetworkStream):
        def __init__(self, stream) -> None:
            self._stream = stream

        def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            return self._stream.read(max_bytes, _clamped(timeout, "read"))

        def write(self, buffer: bytes, timeout: float | None = None) -> None:
            self._stream.write(buffer, _clamped(timeout, "write"))

        def close(self) -> None:
            self._stream.close()

        def start_tls(self, ssl_context, server_hostname=None, timeout=None):
            return Stream(self._stream.start_tls(ssl_context, server_hostname, _clamped(timeout, "connect")))

        def get_extra_info(self, info: str):
            return self._stream.get_extra_info(info)

    class Backend(httpcore.NetworkBackend):
        deadline_aware = True

        def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
            return Stream(inner.connect_tcp(host, port, _clamped(timeout, "connect"), local_address,
                                            socket_options))

        def connect_unix_socket(self, path, timeout=None, socket_options=None):
            return Stream(inner.connect_unix_socket(path, _clamped(timeout, "connect"), socket_options))

        def sleep(self, seconds: float) -> None:
            inner.sleep(seconds)

    return Backend()


def _install_deadlines(client) -> bool:
    """Put the deadline backend under every connection pool of ``client`` (direct and proxies).

    httpx has no public hook for a network backend, so this reaches into its transports; it
    returns False when their layout is not the expected one (then deadlines are still checked
    between reads, and each request's timeouts are cut to the time left when it starts).
    """
    transports = [getattr(client, "_transport", None), *getattr(client, "_mounts", {}).values()]
    pools: list[Any] = [getattr(t, "_pool", None) for t in transports if t is not None]
    if not pools or not all(hasattr(pool, "_network_backend") for pool in pools):
        return False
    for pool in pools:
        if not getattr(pool._network_backend, "deadline_aware", False):
            pool._network_backend = _deadline_backend(pool._network_backend)
    return True


# --- the resolver ---------------------------------------------------------------------------------

@dataclass
class LocalMedia:
    """A file the scorer can read; ``release()`` removes it when we downloaded it."""

    path: Path
    temporary: bool
    size: int

    def release(self) -> None:
        if self.temporary:
            self.path.unlink(missing_ok=True)


def _safe_suffix(ref: str) -> str:
    try:
        suffix = Path(urlsplit(ref).path).suffix[:10]
    except ValueError:
        suffix = ""
    return suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,9}", suffix) else ".bin"


def remove_orphan_downloads(download_dir: Path) -> list[Path]:
    """Remove what killed processes left in ``download_dir``; return what was removed.

    Only our own names are touched: ``mdsvqa-run-*`` folders whose ``lock`` nobody holds (we take
    the lock ourselves before removing, so two cleaners never race a live owner), ``.mdsvqa-new-*``
    folders older than STAGING_STALE_S (a process killed while creating its folder) and, from the
    layout before run folders, top-level ``media-*`` files older than STALE_DOWNLOAD_S.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(download_dir))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        path = Path(entry.path)
        try:
            if entry.name.startswith(RUN_PREFIX) and entry.is_dir(follow_symlinks=False):
                if _remove_if_unlocked(path):
                    removed.append(path)
            elif entry.name.startswith(STAGING_PREFIX) and entry.is_dir(follow_symlinks=False):
                if entry.stat(follow_symlinks=False).st_mtime < now - STAGING_STALE_S:
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
            elif (entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False)
                  and entry.stat(follow_symlinks=False).st_mtime < now - STALE_DOWNLOAD_S):
                path.unlink(missing_ok=True)
                removed.append(path)
        except OSError as exc:
            log.debug("leaving %s: %s", path, exc)
    if removed:
        log.info("removed %d leftover download(s) of stopped processes from %s", len(removed), download_dir)
    return removed


def _remove_if_unlocked(folder: Path) -> bool:
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        # A run folder is renamed into place with its lock held, so one without a lock is being
        # removed by another cleaner, or is a broken leftover.
        shutil.rmtree(folder, ignore_errors=True)
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False  # a live process holds it
            raise
        shutil.rmtree(folder, ignore_errors=True)
        return True
    finally:
        os.close(fd)


class MediaResolver:
    def __init__(self, download_dir: Path, *, max_bytes: int, timeout_s: float,
                 local_files_root: Path | None = None) -> None:
        import httpx

        self.download_dir = Path(download_dir)
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.local_files_root = Path(os.path.realpath(local_files_root)) if local_files_root else None
        read = min(READ_TIMEOUT_S, timeout_s)
        self._http = httpx.Client(
            timeout=httpx.Timeout(connect=min(CONNECT_TIMEOUT_S, timeout_s), read=read, write=read, pool=read),
            follow_redirects=True,  # httpx drops Authorization on redirects to another host
        )
        self.deadlines_installed = _install_deadlines(self._http)
        if not self.deadlines_installed:
            log.warning("httpx's transports are not as expected: a download may overrun "
                        "MDSVQA_MEDIA_TIMEOUT_S by up to one read timeout")
        self._run_lock = threading.Lock()
        self._run_dir: Path | None = None
        self._release_lock: weakref.finalize | None = None  # closes the lock's fd, releasing it
        remove_orphan_downloads(self.download_dir)

    # --- this resolver's own folder ----------------------------------------------------------------
    def _folder(self) -> Path:
        """The locked folder downloads go to, made on first use (again if someone removed it)."""
        with self._run_lock:
            if self._run_dir is None or not self._run_dir.is_dir():
                self._run_dir = self._open_run_folder()
            return self._run_dir

    def _open_run_folder(self) -> Path:
        """A new run folder, its lock held by this object (an earlier one's lock is let go)."""
        self.download_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.download_dir))
        fd = os.open(staging / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, f"{os.getpid()}\n".encode())
            final = self.download_dir / f"{RUN_PREFIX}{os.getpid()}-{staging.name[len(STAGING_PREFIX):]}"
            os.rename(staging, final)  # appears under a cleanable name only with its lock held
        except BaseException:
            os.close(fd)
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._drop_lock()
        self._release_lock = weakref.finalize(self, os.close, fd)
        return final

    def _drop_lock(self) -> None:
        if self._release_lock is not None:
            self._release_lock()
        self._release_lock = None
        self._run_dir = None

    def close(self) -> None:
        """Stop downloading. Our folder goes when it is empty; files a caller still holds stay,
        and stay locked until this object is collected or the process ends (the next resolver to
        start on the dir then removes them)."""
        self._http.close()
        with self._run_lock:
            folder = self._run_dir
            if folder is None:
                return
            try:
                if set(os.listdir(folder)) <= {LOCK_NAME}:
                    (folder / LOCK_NAME).unlink(missing_ok=True)
                    folder.rmdir()
                    self._drop_lock()
            except OSError as exc:
                log.debug("keeping %s: %s", folder, exc)

    # --------------------------------------------------------------------------------------
    def fetch(self, ref: object, *, task_id: int | None, connection: Connection | None) -> LocalMedia:
        """Local file for ``ref``; raises a MediaError subclass that says what went wrong.

        One deadline (``timeout_s``) covers the fetch's transfers, the upload fallback included; it
        starts when the first request is about to go out (imports and auth headers are not counted).
        """
        from label_studio_sdk._extensions.label_studio_tools.core.utils.io import (
            encode_presign_fileuri,
            is_cloud_storage_uri,
        )

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
            shared: list[float] = []  # both tries within one deadline
            try:
                return self._download(self._on_label_studio(ref, connection), connection, ref, shared)
            except (MediaNotFoundError, MediaDownloadError):
                # Cloud-backed default storage serves uploads only through the storage proxy.
                proxy = f"/storage-data/uploaded/?filepath={upload_key}"
                return self._download(self._on_label_studio(proxy, connection), connection, ref, shared)
        if is_cloud_storage_uri(ref):
            if task_id is None:
                raise UnsupportedMediaError(f"{describe(ref)}: cloud storage media needs the task id to be presigned")
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
                f"{describe(path)}: a Label Studio media path, but no Label Studio URL and token are known; "
                "connect the backend from Label Studio (/setup sends them) or set LABEL_STUDIO_URL "
                "and LABEL_STUDIO_API_KEY"
            )
        return connection.url + path

    def _local_storage_file(self, ref: str) -> LocalMedia | None:
        """Read local-files media from disk when we share the directory with Label Studio.

        The ``?d=`` path is normalised as Label Studio does, then its real path (every symlink
        resolved) must lie inside the real path of the root: ``..`` segments and symlinks that
        lead out of the root are refused with MediaAccessDeniedError.
        """
        from label_studio_sdk._extensions.label_studio_tools.core.utils.io import (
            local_files_resolver,
            resolve_local_storage_file,
        )

        if self.local_files_root is None:
            return None
        root = os.path.realpath(self.local_files_root)
        shown = describe(ref)

        def resolve(relative: str) -> str | None:
            try:
                target = os.path.realpath(os.path.join(root, posixpath.normpath(relative).lstrip("/")))
            except ValueError as exc:  # e.g. a NUL byte
                raise MediaNotFoundError(f"{shown}: not a usable file path ({exc})") from exc
            if os.path.commonpath([root, target]) != root:
                raise MediaAccessDeniedError(
                    f"{shown}: the path leads outside MDSVQA_LOCAL_FILES_ROOT (through '..' or a symlink); refused")
            return target

        try:
            with local_files_resolver(resolve):
                path = resolve_local_storage_file(ref)
        except FileNotFoundError as exc:
            raise MediaNotFoundError(f"{shown}: {exc}") from exc
        if path is None or not os.path.isfile(path):
            raise MediaNotFoundError(f"{shown}: no such file under MDSVQA_LOCAL_FILES_ROOT")
        return LocalMedia(Path(path), temporary=False, size=os.path.getsize(path))

    def _headers_for(self, url: str, connection: Connection | None) -> dict[str, str]:
        """Token only for Label Studio's own host, as label-studio-sdk does."""
        if connection is None or urlsplit(url).netloc != connection.netloc:
            return {}
        from .client import api_for

        return api_for(connection).auth_headers()

    def _download(self, url: str, connection: Connection | None, ref: str,
                  shared: list[float] | None = None) -> LocalMedia:
        """Download within ``timeout_s`` from now, or by the deadline in ``shared`` (set there if empty)."""
        headers = self._headers_for(url, connection)
        if shared is None:
            shared = []
        if not shared:
            shared.append(time.monotonic() + self.timeout_s)
        with download_deadline(shared[0] - time.monotonic()) as deadline:
            return self._download_by(deadline, url, headers, ref)

    def _download_by(self, deadline: float, url: str, headers: dict[str, str], ref: str) -> LocalMedia:
        """Stream ``url`` into a temporary file; every read ends by ``deadline`` (see _deadline_backend)."""
        import httpx

        shown = describe(ref)
        started = time.monotonic()
        # closed by the `with handle` below; opened first so that every failure can remove the file
        handle = tempfile.NamedTemporaryFile(dir=self._folder(), prefix=TEMP_PREFIX,  # noqa: SIM115
                                             suffix=_safe_suffix(ref), delete=False)
        path = Path(handle.name)
        size = 0

        def overdue() -> MediaTimeoutError:
            return MediaTimeoutError(f"{shown}: download not finished within MDSVQA_MEDIA_TIMEOUT_S "
                                     f"({self.timeout_s:g} s; {size} bytes received); cut off")

        # Also cut to the deadline where the deadline backend is missing (see _install_deadlines).
        left = max(deadline - started, 0.001)
        read = min(READ_TIMEOUT_S, left)
        timeout = httpx.Timeout(connect=min(CONNECT_TIMEOUT_S, left), read=read, write=read, pool=read)
        try:
            with handle, self._http.stream("GET", url, headers=headers, timeout=timeout) as response:
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
                for chunk in response.iter_bytes():  # no chunk size: whatever each read brought
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise MediaTooLargeError(f"{shown}: more than {self.max_bytes} bytes")
                    if time.monotonic() >= deadline:
                        raise overdue()
                    handle.write(chunk)
        except httpx.TimeoutException as exc:
            path.unlink(missing_ok=True)
            if time.monotonic() >= deadline:
                raise overdue() from exc
            raise MediaTimeoutError(f"{shown}: server stopped answering ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            path.unlink(missing_ok=True)
            raise MediaDownloadError(f"{shown}: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        log.debug("downloaded %s (%d bytes, %.2f s)", shown, size, time.monotonic() - started)
        return LocalMedia(path, temporary=True, size=size)
