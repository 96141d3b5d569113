"""One loopback HTTP server for the tests' stand-ins (media servers, Label Studio's API, proxies).

``LoopbackServer(handler)`` binds 127.0.0.1 on a free port, serves on a daemon thread while
used as a context manager, and closes its socket on exit; ``on_exit`` runs first (release
whatever the handler may be blocked on, so shutdown does not wait for it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LoopbackServer:
    def __init__(self, handler: type[BaseHTTPRequestHandler], *, on_exit: Callable[[], None] | None = None) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self._on_exit = on_exit
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._on_exit is not None:
            self._on_exit()
        self.httpd.shutdown()
        self.httpd.server_close()
