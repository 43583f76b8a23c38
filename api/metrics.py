"""Metrics an operator scrapes from `/metrics` (Prometheus text format).

Request latency per route template (never the raw path: ids stay out of label values), the batch
sizes the micro-batcher forms, its queue depth, the models it has loaded, and jobs by kind and state
with their durations. No note text and nothing per patient: labels are route templates, methods,
status codes, job kinds and states.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    """One registry per app, so several apps in one process (tests) do not share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_seconds = Histogram(
            "notetune_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template, method and status code.",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.batch_notes = Histogram(
            "notetune_batch_notes",
            "Notes scored in one forward pass group formed by the micro-batcher.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )

        self.auth_failures = Counter(
            "notetune_auth_failures",
            "Requests answered 401: a missing, wrong or revoked key, or a failed sign-in.",
            registry=self.registry,
        )
        self.auth_throttled = Counter(
            "notetune_auth_throttled",
            "Requests refused with 429 because their address failed to authenticate too often.",
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "notetune_rate_limited",
            "Requests refused with 429 by a per-key or per-organisation limit, by limit.",
            ("limit",),
            registry=self.registry,
        )

    def observe_batch(self, notes: int, _jobs: int) -> None:
        self.batch_notes.observe(notes)

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ServingCollector(Collector):
    """Read at scrape time: the queue depth and the models the inference thread has loaded."""

    def __init__(self, queued_notes: Callable[[], int], loaded_models: Callable[[], Iterable[str]]) -> None:
        self.queued_notes, self.loaded_models = queued_notes, loaded_models

    def collect(self):
        yield GaugeMetricFamily(
            "notetune_predict_queue_notes",
            "Notes waiting for the inference thread.",
            value=self.queued_notes(),
        )
        yield GaugeMetricFamily(
            "notetune_models_loaded",
            "Fine-tuned models loaded for serving.",
            value=len(list(self.loaded_models())),
        )


class JobCollector(Collector):
    """Jobs by kind and state, and the run time of finished ones, from the database at scrape time."""

    def __init__(self, job_stats: Callable[[], list[tuple[str, str, int, float]]]) -> None:
        self.job_stats = job_stats  # rows of (kind, status, count, seconds run in total)

    def collect(self):
        counts = GaugeMetricFamily("notetune_jobs", "Jobs by kind and state.", labels=("kind", "status"))
        durations = SummaryMetricFamily(
            "notetune_job_duration_seconds",
            "Run time (started to finished) of finished jobs, by kind and final state.",
            labels=("kind", "status"),
        )
        for kind, status, count, seconds in self.job_stats():
            counts.add_metric((kind, status), count)
            if status in ("succeeded", "failed", "cancelled"):
                durations.add_metric((kind, status), count_value=count, sum_value=seconds)
        yield counts
        yield durations


class RequestTimer:
    """ASGI middleware: observes each request's latency under its route template."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.request_seconds.labels(route, scope["method"], str(status)).observe(
                time.perf_counter() - started
            )
