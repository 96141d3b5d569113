"""Media resolution: every kind of task reference, bounded downloads, clear errors, no leftovers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from ml_backend.labelstudio import media as media_module
from ml_backend.labelstudio.client import Connection
from ml_backend.labelstudio.media import (
    LOCK_NAME,
    RUN_PREFIX,
    MediaAccessDeniedError,
    MediaNotFoundError,
    MediaResolver,
    MediaTimeoutError,
    MediaTooLargeError,
    UnsupportedMediaError,
    describe,
    media_key,
)
from tests.backend_fakes import FakeServer
from tests.conditions import wait_for
from tests.loopback import LoopbackServer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def server():
    with FakeServer() as running:
        running.files["upload/1/abc-clip.mp4"] = b"uploaded video bytes"
        running.files["proxy:upload/2/def-clip.mp4"] = b"proxied video bytes"
        running.files["public.mp4"] = b"public video bytes"
        yield running


@pytest.fixture
def resolver(tmp_path):
    made = MediaResolver(tmp_path / "downloads", max_bytes=1000, timeout_s=1.0)
    yield made
    made.close()


def fetch_bytes(resolver, ref, connection, task_id=None):
    media = resolver.fetch(ref, task_id=task_id, connection=connection)
    try:
        return media.path.read_bytes()
    finally:
        media.release()
        assert not media.path.exists(), "downloaded temporary file must be removed on release"


def test_upload_with_token(server, resolver):
    connection = Connection(server.url, server.token)
    assert fetch_bytes(resolver, "/data/upload/1/abc-clip.mp4", connection) == b"uploaded video bytes"
    assert fetch_bytes(resolver, "upload/1/abc-clip.mp4", connection) == b"uploaded video bytes"


def test_upload_falls_back_to_storage_proxy(server, resolver):
    connection = Connection(server.url, server.token)
    assert fetch_bytes(resolver, "/data/upload/2/def-clip.mp4", connection) == b"proxied video bytes"


def test_upload_without_connection_says_what_to_set(resolver):
    with pytest.raises(MediaAccessDeniedError, match="LABEL_STUDIO_URL"):
        resolver.fetch("/data/upload/1/abc-clip.mp4", task_id=1, connection=None)


def test_wrong_token_is_access_denied(server, resolver):
    with pytest.raises(MediaAccessDeniedError, match="401"):
        resolver.fetch("/data/upload/1/abc-clip.mp4", task_id=1, connection=Connection(server.url, "wrong"))


def test_token_only_sent_to_label_studio_host(server, resolver):
    other_host = server.url.replace("127.0.0.1", "localhost")
    assert fetch_bytes(resolver, f"{other_host}/files/public.mp4", Connection(server.url, server.token))
    _method, path, headers = server.requests[-1]
    assert path == "/files/public.mp4"
    assert "Authorization" not in headers


@pytest.mark.parametrize("code, error", [(401, MediaAccessDeniedError), (403, MediaAccessDeniedError),
                                         (404, MediaNotFoundError)])
def test_http_errors(server, resolver, code, error):
    with pytest.raises(error, match=str(code)):
        resolver.fetch(f"{server.url}/status/{code}", task_id=1, connection=None)


def downloaded_files(folder: Path) -> list[Path]:
    """Every file under a download dir except the run folders' lock files."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != LOCK_NAME) if folder.exists() else []


def test_hanging_server_times_out(server, resolver, tmp_path):
    # /hang sends headers and no body until the server shuts down (20 s): only a timeout ends it early.
    with pytest.raises(MediaTimeoutError, match="MDSVQA_MEDIA_TIMEOUT_S"):
        resolver.fetch(f"{server.url}/hang", task_id=1, connection=None)
    assert downloaded_files(tmp_path / "downloads") == []


def test_size_limit(server, resolver, tmp_path):
    with pytest.raises(MediaTooLargeError):
        resolver.fetch(f"{server.url}/huge", task_id=1, connection=None)
    assert downloaded_files(tmp_path / "downloads") == []


def test_local_files_read_in_place(tmp_path):
    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "clip.mp4").write_bytes(b"local bytes")
    resolver = MediaResolver(tmp_path / "dl", max_bytes=100, timeout_s=1, local_files_root=root)
    media = resolver.fetch("/data/local-files/?d=sub/clip.mp4", task_id=1, connection=None)
    assert media.path == (root / "sub" / "clip.mp4").resolve() and not media.temporary
    media.release()
    assert (root / "sub" / "clip.mp4").exists(), "release must never delete a file we did not download"
    with pytest.raises(MediaNotFoundError):
        resolver.fetch("/data/local-files/?d=sub/missing.mp4", task_id=1, connection=None)
    with pytest.raises(MediaAccessDeniedError, match="outside MDSVQA_LOCAL_FILES_ROOT"):
        resolver.fetch("/data/local-files/?d=../../etc/passwd", task_id=1, connection=None)


def test_cloud_uri_is_presigned_through_label_studio(server, resolver):
    with pytest.raises(MediaNotFoundError):  # the fake server has no presign route
        resolver.fetch("s3://bucket/clip.mp4", task_id=7, connection=Connection(server.url, server.token))
    _method, path, headers = server.requests[-1]
    assert path.startswith("/tasks/7/presign/?fileuri=")
    assert headers["Authorization"] == f"Token {server.token}"
    with pytest.raises(UnsupportedMediaError, match="task id"):
        resolver.fetch("gs://bucket/clip.mp4", task_id=None, connection=None)


@pytest.mark.parametrize("ref", ["", "   ", None, 42, ["a"], "ftp://host/x.mp4", "clip.mp4"])
def test_unsupported_references(resolver, ref):
    with pytest.raises(UnsupportedMediaError):
        resolver.fetch(ref, task_id=1, connection=None)


def test_describe_hides_query_strings_and_credentials():
    assert describe("https://user:pw@host.example/a/b.mp4?X-Amz-Signature=abc") == "https://host.example/a/b.mp4?..."
    assert describe("/data/upload/1/x.mp4") == "/data/upload/1/x.mp4"


def test_media_key_makes_relative_references_absolute():
    connection = Connection("http://ls.example:8080/", "t")
    assert media_key("/data/upload/1/x.mp4", connection) == "http://ls.example:8080/data/upload/1/x.mp4"
    assert media_key("upload/1/x.mp4", connection) == "http://ls.example:8080/data/upload/1/x.mp4"
    assert media_key("s3://b/k.mp4", connection) == "s3://b/k.mp4"
    assert media_key("https://cdn/x.mp4", connection) == "https://cdn/x.mp4"


# --- hostile peers ------------------------------------------------------------------------------

class SlowServer(LoopbackServer):
    """A loopback media server that sends slowly, on purpose.

    /drip/<n>: declares n bytes and sends one every ``interval`` s (``finished`` is set once all are sent);
    /stall/<s>: declares 10**6 bytes, sends 16 and then nothing for s seconds (or until the server stops),
    then hangs up (``stall_over``).
    """

    def __init__(self, interval: float = 0.3) -> None:
        self.interval = interval
        self.stop = threading.Event()
        self.finished = threading.Event()
        self.sent = 0
        self.stalled = threading.Event()
        self.stall_over = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path.startswith("/drip/"):
                    total = int(self.path.rsplit("/", 1)[1])
                    self.send_response(200)
                    self.send_header("Content-Length", str(total))
                    self.end_headers()
                    try:
                        for _ in range(total):
                            self.wfile.write(b"x")
                            self.wfile.flush()
                            server.sent += 1
                            if server.stop.wait(server.interval):
                                return
                    except OSError:
                        return  # the client hung up
                    server.finished.set()
                elif self.path.startswith("/stall/"):
                    self.send_response(200)
                    self.send_header("Content-Length", str(10**6))
                    self.end_headers()
                    self.wfile.write(b"y" * 16)
                    self.wfile.flush()
                    server.stalled.set()
                    server.stop.wait(float(self.path.rsplit("/", 1)[1]))
                    server.stall_over.set()
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

        super().__init__(Handler, on_exit=self.stop.set)


@pytest.fixture
def slow_server():
    with SlowServer() as running:
        yield running


def test_the_deadline_bounds_the_whole_download_not_each_chunk(slow_server, tmp_path):
    """A server dripping a byte every 0.3 s never trips a read timeout; the 1.5 s deadline must cut it."""
    resolver = MediaResolver(tmp_path / "downloads", max_bytes=10**6, timeout_s=1.5)
    try:
        assert resolver.deadlines_installed, "every network read must get at most the time left"
        with pytest.raises(MediaTimeoutError, match=r"within MDSVQA_MEDIA_TIMEOUT_S \(1.5 s"):
            resolver.fetch(f"{slow_server.url}/drip/40", task_id=1, connection=None)  # 40 bytes: 12 s
        assert not slow_server.finished.is_set(), "the download was cut before the server finished sending"
        assert slow_server.sent < 40
        assert downloaded_files(tmp_path / "downloads") == [], "the partial download must be removed"
    finally:
        resolver.close()


def test_each_read_gets_at_most_the_time_left(slow_server, tmp_path):
    """The read in progress ends at the deadline even when the client's read timeout is far longer.

    The server stalls for 20 s and then hangs up; the client's read timeout is 30 s. A read that got
    only its own timeout would end with the server's hang-up (a protocol error), not a timeout.
    """
    import httpx

    resolver = MediaResolver(tmp_path / "downloads", max_bytes=10**7, timeout_s=60.0)  # 30 s reads
    try:
        with (pytest.raises(httpx.ReadTimeout), media_module.download_deadline(2.0),
              resolver._http.stream("GET", f"{slow_server.url}/stall/20") as response):
            for _ in response.iter_raw():
                pass
        assert slow_server.stalled.is_set() and not slow_server.stall_over.is_set()
    finally:
        resolver.close()


ORPHAN_MAKER = """
import sys
from pathlib import Path
from ml_backend.labelstudio.media import MediaResolver

resolver = MediaResolver(Path(sys.argv[1]), max_bytes=10**9, timeout_s=120)
resolver.fetch(sys.argv[2], task_id=1, connection=None)
"""


def start_downloading_process(download_dir: Path, url: str) -> tuple[subprocess.Popen, Path]:
    """A real process with a download under way in ``download_dir``; returns it and its temporary file."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen([sys.executable, "-c", ORPHAN_MAKER, str(download_dir), url], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def its_download():
        if process.poll() is not None:
            pytest.fail(f"the downloading process exited early: {process.stderr.read().decode()[-2000:]}")
        found = list(download_dir.glob(f"{RUN_PREFIX}{process.pid}-*/media-*"))
        return found[0] if found else None

    return process, wait_for(its_download, timeout=60, what="a download under way in the child process")


def test_orphans_of_a_killed_process_are_removed_at_start_and_live_ones_kept(slow_server, tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "notes.txt").write_text("not ours")
    (downloads / "other").mkdir()
    (downloads / "other" / "media-1.mp4").write_bytes(b"not ours either: not in a run folder")
    (downloads / "media-recent.mp4").write_bytes(b"old layout, recent: may belong to a live older process")
    killed, orphan = start_downloading_process(downloads, f"{slow_server.url}/stall/120")
    live, live_file = start_downloading_process(downloads, f"{slow_server.url}/stall/120")
    try:
        killed.send_signal(signal.SIGKILL)  # no cleanup of any kind runs
        assert killed.wait(timeout=30) == -signal.SIGKILL
        assert orphan.exists()

        resolver = MediaResolver(downloads, max_bytes=100, timeout_s=1)
        resolver.close()
        assert not orphan.parent.exists(), "the killed process's run folder is removed"
        assert live_file.exists() and live.poll() is None, "a live process's download is never touched"
        assert (downloads / "notes.txt").exists() and (downloads / "other" / "media-1.mp4").exists()
        assert (downloads / "media-recent.mp4").exists()

        live.send_signal(signal.SIGKILL)
        live.wait(timeout=30)
        MediaResolver(downloads, max_bytes=100, timeout_s=1).close()
        assert not live_file.parent.exists(), "once its owner is gone, the folder is an orphan too"
    finally:
        for process in (killed, live):
            if process.poll() is None:
                process.kill()
                process.wait()


def test_a_second_resolver_in_the_same_process_keeps_the_first_ones_downloads(tmp_path):
    downloads = tmp_path / "downloads"
    first = MediaResolver(downloads, max_bytes=100, timeout_s=1)
    folder = first._folder()
    (folder / "media-held.mp4").write_bytes(b"in use")
    second = MediaResolver(downloads, max_bytes=100, timeout_s=1)
    assert (folder / "media-held.mp4").exists()
    first.close()  # a caller still holds a file: it stays, locked
    MediaResolver(downloads, max_bytes=100, timeout_s=1).close()
    assert (folder / "media-held.mp4").exists()
    (folder / "media-held.mp4").unlink()
    second.close()


def test_close_leaves_no_folder_behind(server, resolver, tmp_path):
    assert fetch_bytes(resolver, f"{server.url}/files/public.mp4", None) == b"public video bytes"
    resolver.close()
    assert list((tmp_path / "downloads").iterdir()) == []


def test_local_files_symlinks_out_of_the_root_are_refused(tmp_path):
    root = tmp_path / "media"
    outside = tmp_path / "private"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.mp4").write_bytes(b"not for the backend")
    (root / "sub" / "clip.mp4").write_bytes(b"local bytes")
    (root / "escape.mp4").symlink_to(outside / "secret.mp4")
    (root / "escape_dir").symlink_to(outside, target_is_directory=True)
    (root / "inside.mp4").symlink_to(root / "sub" / "clip.mp4")
    resolver = MediaResolver(tmp_path / "dl", max_bytes=100, timeout_s=1, local_files_root=root)
    try:
        for ref in ("/data/local-files/?d=escape.mp4", "/data/local-files/?d=escape_dir/secret.mp4",
                    "/data/local-files/?d=sub/../../private/secret.mp4"):
            with pytest.raises(MediaAccessDeniedError, match="outside MDSVQA_LOCAL_FILES_ROOT"):
                resolver.fetch(ref, task_id=1, connection=None)
        media = resolver.fetch("/data/local-files/?d=inside.mp4", task_id=1, connection=None)
        assert media.path == (root / "sub" / "clip.mp4").resolve() and media.path.read_bytes() == b"local bytes"
    finally:
        resolver.close()


def test_local_files_root_given_through_a_symlink_still_works(tmp_path):
    real_root = tmp_path / "real-media"
    real_root.mkdir()
    (real_root / "clip.mp4").write_bytes(b"local bytes")
    (tmp_path / "media-link").symlink_to(real_root, target_is_directory=True)
    resolver = MediaResolver(tmp_path / "dl", max_bytes=100, timeout_s=1, local_files_root=tmp_path / "media-link")
    try:
        media = resolver.fetch("/data/local-files/?d=clip.mp4", task_id=1, connection=None)
        assert media.path.read_bytes() == b"local bytes"
    finally:
        resolver.close()


S3_SIGNED = ("https://bucket.s3.eu-west-1.amazonaws.com/videos/clip.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256"
             "&X-Amz-Credential=AKIAEXAMPLE%2F{date}%2Feu-west-1%2Fs3%2Faws4_request&X-Amz-Date={date}T120000Z"
             "&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Security-Token=FQoGZXIvYXdzEXAMPLE"
             "&X-Amz-Signature={signature}")


def test_media_key_drops_credentials_and_signatures():
    key = media_key("https://alice:hunter2@cdn.example/v/clip.mp4", None)
    assert key == "https://cdn.example/v/clip.mp4"
    connection = Connection("http://bob:pa55@ls.example:8080", "t")
    assert media_key("/data/upload/1/x.mp4", connection) == "http://ls.example:8080/data/upload/1/x.mp4"

    first = media_key(S3_SIGNED.format(date="20240101", signature="a" * 64), None)
    second = media_key(S3_SIGNED.format(date="20240315", signature="b" * 64), None)
    assert first == second == "https://bucket.s3.eu-west-1.amazonaws.com/videos/clip.mp4"
    for secret in ("AKIAEXAMPLE", "FQoGZXIv", "a" * 64, "Signature", "Credential"):
        assert secret not in first

    signed = {
        "gcs": "https://storage.googleapis.com/b/v.mp4?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=sa%40p"
               "&X-Goog-Date=20240101T000000Z&X-Goog-Expires=900&X-Goog-SignedHeaders=host&X-Goog-Signature=beef",
        "azure": "https://acct.blob.core.windows.net/c/v.mp4?sv=2022-11-02&st=2024-01-01&se=2024-01-02&sr=b&sp=r"
                 "&sig=SeCrEt%3D",
        "cloudfront": "https://d1.cloudfront.net/v.mp4?Expires=1700000000&Signature=SeCrEt&Key-Pair-Id=KPID",
        "token": "https://media.example/v.mp4?access_token=SeCrEt&token=SeCrEt2&quality=hd",
    }
    keys = {name: media_key(url, None) for name, url in signed.items()}
    assert keys == {"gcs": "https://storage.googleapis.com/b/v.mp4", "azure": "https://acct.blob.core.windows.net/c/v.mp4",
                    "cloudfront": "https://d1.cloudfront.net/v.mp4", "token": "https://media.example/v.mp4?quality=hd"}
    for url in [*signed.values(), S3_SIGNED]:
        shown = describe(url)
        assert "SeCrEt" not in shown and "Signature" not in shown and "beef" not in shown
    assert describe("/data/upload/1/x.mp4?token=SeCrEt") == "/data/upload/1/x.mp4"
    assert "hunter2" not in describe("s3://alice:hunter2@bucket/k.mp4")


def test_media_keys_stay_distinct_for_different_videos_and_stable_for_plain_ones():
    keys = [media_key(u, None) for u in (
        S3_SIGNED.replace("clip.mp4", "a.mp4").format(date="20240101", signature="1" * 64),
        S3_SIGNED.replace("clip.mp4", "b.mp4").format(date="20240101", signature="1" * 64),
        "https://media.example/v.mp4?quality=hd&token=x", "https://media.example/v.mp4?quality=sd&token=x",
        "https://other.example/v.mp4", "https://media.example:8443/v.mp4")]
    assert len(set(keys)) == len(keys)
    plain = "https://cdn.example/v%20x.mp4?a=1&&b=c+d&expires=soon#t=10"  # no secrets: its own key, byte for byte
    assert media_key(plain, None) == plain
    assert media_key("https://acct.example/v.mp4?st=30&sv=1", None).endswith("?st=30&sv=1"), "no sig: no SAS"
    assert media_key("http://[::1/broken", None).startswith("unparsed:")
    assert "broken" not in media_key("http://[::1/broken", None)
