"""A switchable outage in front of a real Label Studio: a loopback HTTP proxy whose API can go down.

While ``down`` is set, every ``/api/`` request is answered 503 (as a load balancer in front
of a stopped Label Studio would) and counted; media (``/data/...``) still flows, so the
backend can fetch and score videos while it cannot deliver predictions.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler

import requests

from tests.loopback import LoopbackServer

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "upgrade",
               "proxy-authorization", "te", "trailers"}


class OutageProxy(LoopbackServer):
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.down = threading.Event()
        self.refused = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy.down.is_set() and self.path.startswith("/api/"):
                    with proxy._lock:
                        proxy.refused += 1
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP | {"host"}}
                upstream = requests.request(self.command, proxy.upstream + self.path, data=body, headers=headers,
                                            timeout=60, allow_redirects=False)
                content = upstream.content
                self.send_response(upstream.status_code)
                for name, value in upstream.headers.items():
                    if name.lower() not in _HOP_BY_HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _forward

        super().__init__(Handler)
