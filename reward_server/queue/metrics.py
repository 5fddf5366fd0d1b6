"""Prometheus metrics of the Redis queue, for fronts and workers (default registry).

prometheus-client is part of the server extra; without it the metrics are no-ops, so a worker
still runs where the package is missing.
"""

from __future__ import annotations

from typing import Any

try:
    from prometheus_client import Counter, Gauge, Histogram
except ImportError:  # pragma: no cover - exercised only without the server extra
    Counter = Gauge = Histogram = None  # type: ignore[assignment,misc]


class _Noop:
    def labels(self, *args: Any, **kwargs: Any) -> _Noop:
        return self

    def inc(self, *args: Any) -> None: ...
    def dec(self, *args: Any) -> None: ...
    def set(self, *args: Any) -> None: ...
    def observe(self, *args: Any) -> None: ...


def _make(kind: Any, name: str, doc: str, labels: tuple[str, ...], **kwargs: Any) -> Any:
    return _Noop() if kind is None else kind(name, doc, labels, **kwargs)


_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# Worker side.
JOBS = _make(Counter, "psr_worker_jobs_total", "jobs finished by workers, by outcome", ("reward", "outcome"))
BATCH_SIZE = _make(Histogram, "psr_worker_batch_size", "samples per model call on a worker", ("reward",),
                   buckets=_SIZE_BUCKETS)
BATCH_SECONDS = _make(Histogram, "psr_worker_batch_seconds", "model time per batch on a worker", ("reward",),
                      buckets=_LATENCY_BUCKETS)
JOB_LATENCY = _make(Histogram, "psr_queue_job_latency_seconds", "time from enqueue to result written",
                    ("reward",), buckets=_LATENCY_BUCKETS)
RETRIES = _make(Counter, "psr_queue_retries_total", "jobs claimed from a dead or stalled worker", ("reward",))
DEAD_LETTERS = _make(Counter, "psr_queue_dead_letters_total", "jobs given up after max_attempts", ("reward",))
REDIS_ERRORS = _make(Counter, "psr_queue_redis_errors_total", "Redis connection errors seen", ("side",))



class FrontQueueCollector:
    """Front-side gauges read live from a ``RedisBackend`` at scrape time (for the app's registry)."""

    def __init__(self, backend: Any, limiter: Any = None):
        self.backend = backend
        self.limiter = limiter

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        workers = GaugeMetricFamily("psr_queue_live_workers", "workers with a recent heartbeat", labels=["reward"])
        for name, n in self.backend.workers().items():
            workers.add_metric([name], n)
        depth = GaugeMetricFamily("psr_queue_jobs_waiting", "jobs queued or in flight in a reward's stream",
                                  labels=["reward"])
        for name, n in self.backend.queued().items():
            depth.add_metric([name], n)
        yield workers
        yield depth
        if self.limiter is not None:
            yield CounterMetricFamily("psr_queue_rejected", "requests refused by the per-caller queue limit",
                                      value=self.limiter.rejected)
