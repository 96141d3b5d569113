"""Stand-ins for the backend's unit tests: a scripted scorer and a small media/Label Studio HTTP server."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from ml_backend.scoring import ScoreResult
from tests.loopback import LoopbackServer

FAKE_VERSION = "FAKE-base+adapter@00000000"


class FakeScorer:
    """Difficulty from the file's bytes; files starting with b'BAD' fail like a corrupt video.

    ``gate``: when set, scoring waits on it (to test deadlines). ``calls`` records batches.
    """

    model_version = FAKE_VERSION

    def __init__(self) -> None:
        self.gate: threading.Event | None = None
        self.calls: list[list[str]] = []
        self.cache: dict[bytes, float] = {}
        self.lock = threading.Lock()

    @staticmethod
    def difficulty_of(data: bytes) -> float:
        return 1.0 + (sum(data) % 400) / 100.0

    def cached_result(self, path):
        data = Path(path).read_bytes()
        if data in self.cache:
            return ScoreResult(Path(path), Path(path).name, self.cache[data], None, None, True, FAKE_VERSION)
        return None

    def score_paths(self, paths):
        paths = [Path(p) for p in paths]
        with self.lock:  # model work is serialized, as in the real scorer
            self.calls.append([p.name for p in paths])
            if self.gate is not None:
                assert self.gate.wait(30), "test gate never opened"
            for path in paths:
                data = path.read_bytes()
                if data.startswith(b"BAD"):
                    yield ScoreResult(path, path.name, None, None, f"{path}: cannot decode video", False,
                                      FAKE_VERSION)
                    continue
                difficulty = self.difficulty_of(data)
                self.cache[data] = difficulty
                yield ScoreResult(path, path.name, difficulty, f"<answer>{difficulty:.2f}</answer>", None, False,
                                  FAKE_VERSION)


class FakeServer(LoopbackServer):
    """Serves media with the behaviours the resolver must handle, and a sliver of Label Studio's API.

    Routes: /data/upload/<p>/<name> (needs ``Token <token>``), /storage-data/uploaded/?filepath=,
    /files/<name> (public), /status/<code>, /hang, /huge; /api/predictions (GET/POST) records posts.
    """

    def __init__(self, token: str = "secret-token") -> None:
        self.token = token
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, dict]] = []
        self.predictions: list[dict] = []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: bytes = b"", content_type: str = "application/octet-stream",
                      length: int | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                if body:
                    self.wfile.write(body)

            def _authorized(self) -> bool:
                return self.headers.get("Authorization") == f"Token {server.token}"

            def do_GET(self):
                parts = urlsplit(self.path)
                server.requests.append(("GET", self.path, dict(self.headers)))
                if parts.path.startswith("/data/upload/"):
                    if not self._authorized():
                        return self._send(401, b'{"detail":"no token"}', "application/json")
                    name = parts.path[len("/data/"):]
                    return self._send(200, server.files[name]) if name in server.files else self._send(404)
                if parts.path == "/storage-data/uploaded/":
                    if not self._authorized():
                        return self._send(401)
                    name = parse_qs(parts.query).get("filepath", [""])[0]
                    key = "proxy:" + name
                    return self._send(200, server.files[key]) if key in server.files else self._send(404)
                if parts.path.startswith("/files/"):
                    name = parts.path[len("/files/"):]
                    return self._send(200, server.files[name]) if name in server.files else self._send(404)
                if parts.path.startswith("/status/"):
                    return self._send(int(parts.path.rsplit("/", 1)[1]), b"nope")
                if parts.path == "/hang":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    server.release.wait(20)
                    return None
                if parts.path == "/huge":
                    return self._send(200, b"x" * 10, length=10**12)
                if parts.path == "/api/predictions/":
                    task = int(parse_qs(parts.query).get("task", ["0"])[0])
                    found = [p for p in server.predictions if p["task"] == task]
                    return self._send(200, json.dumps(found).encode(), "application/json")
                return self._send(404)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                server.requests.append(("POST", self.path, dict(self.headers)))
                if urlsplit(self.path).path == "/api/predictions/":
                    if not self._authorized():
                        return self._send(401)
                    record = {"id": len(server.predictions) + 1, "created_at": time.time(), **body}
                    server.predictions.append(record)
                    return self._send(201, json.dumps(record).encode(), "application/json")
                return self._send(404)

        super().__init__(Handler, on_exit=self.release.set)
