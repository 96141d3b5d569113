"""The Flask app speaking Label Studio's ML backend protocol (app factory).

Routes: GET /health, POST /setup, POST /predict, POST /webhook, POST /train,
GET /versions, GET /train/status, GET /train/jobs, GET /metrics, and for people GET /status (+ /status.json) and
GET /report (server/status.py). The app only parses HTTP, checks access and maps errors
to status codes; behaviour lives in BackendService. Request paths are never logged
(they could carry tokens in query strings); metrics label requests by route rule.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from ..labelstudio.config import LabelConfigError
from ..settings import Settings
from .auth import WEBHOOK_SECRET_HEADER
from .service import BackendService, BadRequestError, ModelNotReadyError, parse_project_id
from .webhooks import START_TRAINING

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024  # a 10k-task /predict is a few MB
MAX_JSON_DEPTH = 64  # Label Studio's bodies nest < 10 deep; json.loads itself fails near 1000
RESERVED_THREADS = 2  # request threads that waiting /predict requests never take (see predict_wait_slots)
PROTECTED = frozenset({"setup", "predict", "train", "versions", "train_status", "train_jobs",
                       "metrics", "status_page", "status_json", "report"})  # endpoints needing basic auth


def create_app(settings: Settings | None = None, *, service: BackendService | None = None,
               start: bool = True) -> Flask:
    """Build the app; ``start`` begins loading the model and the background workers."""
    from ..settings import load_settings

    settings = settings or (service.settings if service else load_settings())
    service = service or BackendService(settings)
    if start:
        service.start()
    app = Flask("mdsvqa")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    # At most this many /predict requests wait on scoring at once; the others answer at once (cached
    # results, the rest deferred), so /health, /setup and webhooks always find a free thread.
    slots = predict_wait_slots(settings.threads)
    predict_slots = threading.BoundedSemaphore(slots) if slots else None
    app.extensions["mdsvqa"] = service
    if not service.access.basic_auth_required and service.access.webhook_secret is None:
        log.warning("no MDSVQA_BASIC_AUTH_USER/PASSWORD: anyone who reaches this port can use the backend")

    def error(status: int, message: str, **extra: Any) -> Response:
        response = jsonify({"error": message, **extra})
        response.status_code = status
        return response

    def json_body() -> Any:
        return parse_json_body(request.get_data(cache=True))  # over MAX_BODY_BYTES: RequestEntityTooLarge

    @app.before_request
    def _start_timer() -> Response | None:
        g.started = time.perf_counter()
        if request.endpoint in PROTECTED and not service.access.basic_auth_ok(request.headers.get("Authorization")):
            response = error(401, "authentication required")
            response.headers["WWW-Authenticate"] = 'Basic realm="mdsvqa"'
            return response
        return None

    @app.after_request
    def _count(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        service.metrics.requests.labels(route, str(response.status_code)).inc()
        started = g.get("started")
        if started is not None:
            service.metrics.latency.labels(route).observe(time.perf_counter() - started)
        return response

    @app.errorhandler(BadRequestError)
    def _bad_request(exc: BadRequestError) -> Response:
        return error(400, str(exc))

    @app.errorhandler(LabelConfigError)
    def _bad_config(exc: LabelConfigError) -> Response:
        log.warning("label config rejected: %s", exc)
        return error(422, str(exc))

    @app.errorhandler(ModelNotReadyError)
    def _not_ready(exc: ModelNotReadyError) -> Response:
        response = error(500 if exc.failed else 503, str(exc))
        if not exc.failed:
            response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(_exc) -> Response:
        return error(413, f"request body over {MAX_BODY_BYTES} bytes")

    @app.errorhandler(404)
    def _not_found(_exc) -> Response:
        return error(404, "no such route; see /health, /setup, /predict, /webhook, /versions, /train/status, "
                     "/metrics, /status, /report")

    @app.errorhandler(405)
    def _bad_method(_exc) -> Response:
        return error(405, f"{request.method} not allowed here")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unexpected error in %s", request.endpoint)
        return error(500, f"internal error: {type(exc).__name__}")

    @app.get("/")
    @app.get("/health")
    def health() -> Response:
        return jsonify(service.health())

    @app.post("/setup")
    def setup() -> Response:
        body = json_body()
        if isinstance(body, dict) and body.get("schema") is not None and not isinstance(body["schema"], str):
            raise BadRequestError("'schema' must be the label config: a string of XML")
        return jsonify(service.setup(body))

    @app.post("/predict")
    def predict() -> Response:
        body = json_body()
        admitted = predict_slots is not None and predict_slots.acquire(blocking=False)
        service.metrics.predict_admission.labels("waited" if admitted else "busy").inc()
        try:
            return jsonify(service.predict(body, wait=admitted))
        finally:
            if admitted and predict_slots is not None:
                predict_slots.release()

    @app.post("/webhook")
    def webhook() -> Response:
        if not service.access.webhook_ok(request.headers.get("Authorization"),
                                         request.headers.get(WEBHOOK_SECRET_HEADER)):
            return error(401, f"webhook needs basic auth or the {WEBHOOK_SECRET_HEADER} header")
        reply = service.webhook(json_body())
        response = jsonify(reply.body)
        response.status_code = reply.status_code
        return response

    @app.post("/train")
    def train() -> Response:
        """Older Label Studio (training webhooks flag off) posts here; treat as START_TRAINING."""
        body = json_body()
        event = {"action": START_TRAINING, "project": body.get("project") if isinstance(body, dict) else None}
        reply = service.webhook(event)
        response = jsonify(reply.body)
        response.status_code = reply.status_code
        return response

    @app.get("/versions")
    def versions() -> Response:
        return jsonify(service.versions())

    @app.get("/train/status")
    def train_status() -> Response:
        """The latest training job (or ?job=ID): state, progress, message, result; ?log=N adds its last N lines."""
        try:
            lines = max(0, min(int(request.args.get("log", "0")), 5000))
        except ValueError as exc:
            raise BadRequestError("'log' must be a number of lines") from exc
        job_id = request.args.get("job") or None
        from ..training.jobs import JobError

        try:
            return jsonify(service.train_status(job_id, lines))
        except JobError as exc:
            return error(404, str(exc))

    @app.get("/train/jobs")
    def train_jobs() -> Response:
        history = getattr(service.training, "history", None)
        return jsonify({"jobs": history() if history is not None else []})

    @app.get("/metrics")
    def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        service.metrics.queue_length.set(service.queue.pending)
        return Response(generate_latest(service.metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    @app.get("/status")
    def status_page() -> Response:
        """Progress for people: plain HTML, the numbers of /status.json (``?refresh=N`` seconds, 0 = off)."""
        from .status import render_status, snapshot

        try:
            refresh = max(0, min(int(request.args.get("refresh", "10")), 3600))
        except ValueError as exc:
            raise BadRequestError("'refresh' must be a number of seconds") from exc
        return Response(render_status(snapshot(service), refresh_s=refresh), mimetype="text/html")

    @app.get("/status.json")
    def status_json() -> Response:
        from .status import snapshot

        return jsonify(snapshot(service))

    @app.get("/report")
    def report() -> Response:
        """The pool report of the latest ordering pass (``?project=P`` another project's)."""
        from .status import live_report

        project = request.args.get("project")
        status, page = live_report(service, parse_project_id(project) if project else None)
        return Response(page, status=status, mimetype="text/html")

    return app


def predict_wait_slots(threads: int) -> int:
    """/predict requests that may wait on scoring at once: all request threads but RESERVED_THREADS
    (but one with 2 threads, none with 1), which stay free for /health, /setup and webhooks."""
    return 0 if threads <= 1 else max(1, threads - RESERVED_THREADS)


def parse_json_body(data: bytes) -> Any:
    """The body as JSON; BadRequestError (400) for anything else, too deep nesting included."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BadRequestError("the request body is not valid JSON") from exc
    if data.count(b"[") + data.count(b"{") > MAX_JSON_DEPTH and _nests_deeper(body, MAX_JSON_DEPTH):
        raise BadRequestError(f"the request body nests deeper than {MAX_JSON_DEPTH} levels")
    return body


def _nests_deeper(value: Any, limit: int) -> bool:
    """Whether containers nest more than ``limit`` deep (iterative: no recursion on client input)."""
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False
