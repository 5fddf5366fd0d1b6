"""Prometheus metrics of the reward server (one registry per app, so tests can run several)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["PROMETHEUS_CONTENT_TYPE", "ServerMetrics"]

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ServerMetrics:
    """Request, batch and per-reward counters exposed at ``GET /metrics``."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("psr_requests_total", "HTTP requests", ["route", "status"], registry=r)
        self.request_latency = Histogram(
            "psr_request_latency_seconds", "HTTP request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.images_scored = Counter("psr_images_scored_total", "samples scored", ["reward"], registry=r)
        self.reward_errors = Counter("psr_reward_errors_total", "samples a reward failed on", ["reward"], registry=r)
        self.batch_size = Histogram(
            "psr_batch_size", "samples per model call", ["reward"], buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_latency = Histogram(
            "psr_batch_latency_seconds", "model time per batch", ["reward"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("psr_queue_depth", "samples waiting for a batch", ["reward"], registry=r)

    def batch_observer(self, reward: str) -> Callable[[int, float, bool], None]:
        """A callback for ``DynamicBatcher`` recording one reward's batches."""

        def observe(size: int, seconds: float, failed: bool) -> None:
            self.batch_size.labels(reward).observe(size)
            self.batch_latency.labels(reward).observe(seconds)

        return observe

    def record_results(self, reward: str, scored: int, failed: int) -> None:
        self.images_scored.labels(reward).inc(scored)
        if failed:
            self.reward_errors.labels(reward).inc(failed)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts requests and their latency per route and status (pure ASGI: no extra task or stream
    per request, unlike ``@app.middleware("http")``)."""

    def __init__(self, app: Any, metrics: ServerMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            label = getattr(scope.get("route"), "path", "unmatched")  # set by the router on this scope
            self.metrics.requests.labels(label, str(status)).inc()
            self.metrics.request_latency.labels(label).observe(time.perf_counter() - started)
