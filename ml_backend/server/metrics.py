"""Prometheus metrics of one backend process.

The server is a single process (see docs/backend.md), so one in-process registry is
complete; no multiprocess directory is needed. Each app gets its own registry so tests
can build several apps in one process.

Label values never come from client input unchecked: routes are url rules ("unmatched"
otherwise), webhook actions are one of the known actions or "other" (a client sending a
million made-up actions must not make a million time series).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from .webhooks import ANNOTATION_ACTIONS, OTHER_KNOWN_ACTIONS, START_TRAINING

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 100)
OTHER = "other"
# "none": the body had no action
WEBHOOK_ACTION_LABELS = frozenset(ANNOTATION_ACTIONS | OTHER_KNOWN_ACTIONS | {START_TRAINING, "none"})


class BoundedLabels:
    """A labelled metric whose chosen labels only take values from a fixed set (else OTHER).

    ``allowed`` gives, per label position, the accepted values or None (any value: the caller's
    own, bounded vocabulary). ``labels()`` works like the wrapped metric's.
    """

    def __init__(self, metric: Any, allowed: list[Collection[str] | None]) -> None:
        self.metric = metric
        self._allowed = allowed

    def labels(self, *values: str) -> Any:
        return self.metric.labels(*(value if known is None or value in known else OTHER
                                    for value, known in zip(values, self._allowed)))


class BackendMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("mdsvqa_http_requests", "HTTP requests by route and status.",
                                ["route", "status"], registry=r)
        self.latency = Histogram("mdsvqa_http_request_seconds", "Request latency by route.", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.predictions = Counter(
            "mdsvqa_task_predictions", "Tasks answered by /predict, by outcome "
            "(cached, scored, deferred = pushed later, failed).", ["outcome"], registry=r)
        self.cache = Counter("mdsvqa_score_cache_lookups", "Backend score store lookups.", ["result"], registry=r)
        self.queue_length = Gauge("mdsvqa_queue_length", "Videos waiting to be fetched or scored.", registry=r)
        self.videos_scored = Counter("mdsvqa_videos_scored", "Videos through the model, by result.", ["result"],
                                     registry=r)
        self.scoring_seconds = Histogram("mdsvqa_scoring_batch_seconds", "Model time per batch.",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.media_failures = Counter("mdsvqa_media_failures", "Media fetch failures by error type.", ["error"],
                                      registry=r)
        self.outbox = Counter("mdsvqa_outbox_runs", "Background actions run through the outbox, by kind and "
                              "outcome (ok, retry, gave_up).", ["kind", "outcome"], registry=r)
        self.pushes = Counter("mdsvqa_pushed_predictions", "Predictions posted to Label Studio in the background.",
                              ["result"], registry=r)
        self.webhooks = BoundedLabels(Counter(
            "mdsvqa_webhook_events", "Webhook events by action (unknown ones: other) and handling.",
            ["action", "handling"], registry=r), [WEBHOOK_ACTION_LABELS, None])
        self.predict_admission = Counter(
            "mdsvqa_predict_admission", "/predict requests by whether they could wait on scoring (waited) or "
            "found every waiting slot taken and answered at once, the rest deferred (busy).", ["result"], registry=r)
        self.model_info = Info("mdsvqa_model", "The model version this backend serves.", registry=r)
        self.model_ready = Gauge("mdsvqa_model_ready", "1 once the model is loaded.", registry=r)
