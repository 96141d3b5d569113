"""Serving the app with gunicorn: one gthread worker, many threads.

Why one worker: the model lives in process memory (a 7B model is ~16 GB of GPU memory)
and model work is serialized anyway, so more workers would only duplicate the model, the
queue and the cache. Threads give the concurrency that matters: /health, /setup, cached
/predict and webhooks answer while the model is busy on a batch. With one process the
Prometheus registry is complete, so no multiprocess mode is needed.

The app is built in the worker after the fork (no preload), so the background threads
and the model load belong to the serving process. The model loads on a thread: the port
opens at once and /health reports "loading" until it is ready.
"""

from __future__ import annotations

import logging

from gunicorn.app.base import BaseApplication

from ..settings import Settings

log = logging.getLogger(__name__)


class BackendApplication(BaseApplication):
    def __init__(self, settings: Settings, *, log_level: str = "info") -> None:
        self.settings = settings
        self.log_level = log_level
        super().__init__()

    def load_config(self) -> None:
        options = {
            "bind": f"{self.settings.host}:{self.settings.port}",
            "workers": 1,
            "worker_class": "gthread",
            "threads": self.settings.threads,
            "timeout": 120,  # heartbeat of the worker loop, not a request limit (gthread)
            "graceful_timeout": 10,
            "keepalive": 5,
            "preload_app": False,
            "accesslog": None,  # paths can carry tokens; /metrics counts requests instead
            "errorlog": "-",
            "loglevel": self.log_level,
            "proc_name": "mdsvqa-serve",
            # gunicorn >= 25 opens a control socket in ~/.gunicorn; two backends on one host would clash
            "control_socket_disable": True,
        }
        for key, value in options.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self):
        from .app import create_app

        _configure_logging(self.log_level)
        return create_app(self.settings)


def _configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    logging.getLogger("ml_backend").setLevel(level.upper())
    # the SDK logs every media URL it resolves at INFO, tokens in query strings included
    logging.getLogger("label_studio_sdk").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def serve(settings: Settings, *, log_level: str = "info") -> None:
    BackendApplication(settings, log_level=log_level).run()
