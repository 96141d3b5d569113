"""Media resolution: every kind of task reference, bounded downloads, clear errors, no leftovers."""

from __future__ import annotations

import time

import pytest

from ml_backend.labelstudio.client import Connection
from ml_backend.labelstudio.media import (MediaAccessDeniedError, MediaNotFoundError, MediaResolver,
                                          MediaTimeoutError, MediaTooLargeError, UnsupportedMediaError, describe,
                                          media_key)
from tests.backend_fakes import FakeServer


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
    method, path, headers = server.requests[-1]
    assert path == "/files/public.mp4"
    assert "Authorization" not in headers


@pytest.mark.parametrize("code, error", [(401, MediaAccessDeniedError), (403, MediaAccessDeniedError),
                                         (404, MediaNotFoundError)])
def test_http_errors(server, resolver, code, error):
    with pytest.raises(error, match=str(code)):
        resolver.fetch(f"{server.url}/status/{code}", task_id=1, connection=None)


def test_hanging_server_times_out(server, resolver, tmp_path):
    started = time.monotonic()
    with pytest.raises(MediaTimeoutError):
        resolver.fetch(f"{server.url}/hang", task_id=1, connection=None)
    assert time.monotonic() - started < 5
    assert list((tmp_path / "downloads").iterdir()) == []


def test_size_limit(server, resolver, tmp_path):
    with pytest.raises(MediaTooLargeError):
        resolver.fetch(f"{server.url}/huge", task_id=1, connection=None)
    assert list((tmp_path / "downloads").iterdir()) == []


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
    with pytest.raises(MediaNotFoundError):
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
