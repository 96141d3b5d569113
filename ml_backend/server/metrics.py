"""Prometheus metrics of one backend process.

The server runs a single gunicorn worker (see docs/backend.md), so one in-process
registry is complete; no multiprocess directory is needed. Each app gets its own
registry so tests can build several apps in one process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 100)


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
        self.pushes = Counter("mdsvqa_pushed_predictions", "Predictions posted to Label Studio in the background.",
                              ["result"], registry=r)
        self.webhooks = Counter("mdsvqa_webhook_events", "Webhook events by action and handling.",
                                ["action", "handling"], registry=r)
        self.model_info = Info("mdsvqa_model", "The model version this backend serves.", registry=r)
        self.model_ready = Gauge("mdsvqa_model_ready", "1 once the model is loaded.", registry=r)
