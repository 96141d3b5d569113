"""Serving the app: waitress, one process, ``MDSVQA_THREADS`` request threads.

Why waitress: its event loop reads each request *whole* (headers and body, buffered in
memory or a temporary file) before a request thread sees it, so idle sockets, half-sent
headers and slow bodies cost a socket each, never a thread, and a silent connection is
closed after ``CHANNEL_TIMEOUT_S``. gunicorn's gthread worker hands a fresh connection to
a thread that then blocks reading the request: 32 idle or half-sent connections kept
``/health`` waiting ~99 s on loopback. Body limits are enforced there too: a body over
``app.MAX_BODY_BYTES`` gets 413 whether it is sent with a Content-Length or chunked.

Why one process: the model lives in process memory (a 7B model is ~16 GB of GPU memory)
and model work is serialized anyway, so more processes would only duplicate the model, the
queue and the cache; with one process the Prometheus registry is complete. Threads give the
concurrency that matters: /health, /setup, cached /predict and webhooks answer while the
model is busy; ``app.py`` keeps some of them free of waiting /predict requests.

The port is bound first, then the model loads on a thread: /health reports "loading"
until it is ready. SIGTERM and SIGINT stop the server and the background workers.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

from ..settings import Settings

log = logging.getLogger(__name__)

CHANNEL_TIMEOUT_S = 30  # a connection that sends nothing for this long (mid-request included) is closed
CLEANUP_INTERVAL_S = 5  # how often silent connections are looked for
CONNECTION_LIMIT = 1000  # open connections at once; an idle one costs a socket, not a thread
MAX_HEADER_BYTES = 64 * 1024  # request line and headers (431 past this)


def server_options(settings: Settings) -> dict[str, Any]:
    """waitress adjustments for these settings (host, port, threads) and the app's body limit."""
    from .app import MAX_BODY_BYTES

    return {
        "host": settings.host,
        "port": settings.port,
        "threads": settings.threads,
        "channel_timeout": CHANNEL_TIMEOUT_S,
        "cleanup_interval": CLEANUP_INTERVAL_S,
        "connection_limit": CONNECTION_LIMIT,
        "asyncore_use_poll": True,  # poll(), not select(): descriptors past 1024 are fine
        "max_request_header_size": MAX_HEADER_BYTES,
        "max_request_body_size": MAX_BODY_BYTES + 1,  # waitress refuses bodies >= this; Flask's limit is '>'
        "expose_tracebacks": False,
        "ident": "mdsvqa",
    }


def create_server(settings: Settings, app: Any) -> Any:
    """Bind the port and return the waitress server for ``app`` (``run()`` serves until stopped)."""
    from waitress.server import create_server as waitress_server

    return waitress_server(app, **server_options(settings))


def _configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    logging.getLogger("ml_backend").setLevel(level.upper())
    logging.getLogger("waitress").setLevel(logging.INFO)  # "Serving on ...", queue-depth warnings
    # the SDK logs every media URL it resolves at INFO, tokens in query strings included
    logging.getLogger("label_studio_sdk").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _stop_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # ends waitress' loop in the main thread; serve() cleans up


def serve(settings: Settings, *, log_level: str = "info") -> None:
    from .app import create_app

    _configure_logging(log_level)
    app = create_app(settings, start=False)
    service = app.extensions["mdsvqa"]
    server = create_server(settings, app)  # binding fails before anything is loaded or started
    previous = {sig: signal.signal(sig, _stop_on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        service.start()
        log.info("serving on http://%s:%s with %d threads", settings.host, settings.port, settings.threads)
        server.run()  # returns (after closing itself) on SystemExit or KeyboardInterrupt
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.close()
        service.stop()
