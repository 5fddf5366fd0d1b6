"""Per-caller queue limits: a caller may have at most N samples waiting; more is 429 + Retry-After."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

from reward_server.auth import CURRENT_CALLER
from reward_server.rewards.base import ScoreResult
from shared.protocol import Sample, ScoreRequest


class QueueFull(RuntimeError):
    """The caller already has too many samples queued (429)."""

    def __init__(self, caller: str, queued: int, limit: int, retry_after_s: float):
        self.retry_after_s = retry_after_s
        super().__init__(f"caller {caller!r} already has {queued} samples queued (limit {limit}); "
                         f"retry after {retry_after_s:g}s")


class CallerLimiter:
    """Counts in-flight samples per caller in this front process."""

    def __init__(self, max_samples: int, retry_after_s: float = 1.0):
        self.max_samples = max_samples
        self.retry_after_s = retry_after_s
        self._queued: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        self.rejected = 0

    def check(self, caller: str, n: int) -> None:
        """Raise ``QueueFull`` if ``reserve(caller, n)`` would, without counting anything."""
        with self._lock:
            queued = self._queued.get(caller, 0)
            if queued and queued + n > self.max_samples:
                self.rejected += 1
                raise QueueFull(caller, queued, self.max_samples, self.retry_after_s)

    def reserve(self, caller: str, n: int) -> None:
        """Count ``n`` samples for ``caller`` or raise ``QueueFull``. A request larger than the
        limit is let through when the caller has nothing queued (it could never pass otherwise)."""
        with self._lock:
            queued = self._queued[caller]
            if queued and queued + n > self.max_samples:
                self.rejected += 1
                raise QueueFull(caller, queued, self.max_samples, self.retry_after_s)
            self._queued[caller] = queued + n

    def release(self, caller: str, n: int) -> None:
        with self._lock:
            self._queued[caller] -= n
            if self._queued[caller] <= 0:
                del self._queued[caller]

    def queued(self, caller: str) -> int:
        with self._lock:
            return self._queued.get(caller, 0)


class LimitedBackend:
    """Wraps any ``Backend``: reserves the caller's share before scoring, releases after."""

    def __init__(self, inner: Any, limiter: CallerLimiter):
        self.inner = inner
        self.limiter = limiter

    async def run(self, request: ScoreRequest, samples: list[Sample], rewards: list[str]) -> dict[str, list[ScoreResult]]:
        caller = CURRENT_CALLER.get()
        self.limiter.reserve(caller, len(samples))
        try:
            return await self.inner.run(request, samples, rewards)
        finally:
            self.limiter.release(caller, len(samples))

    def ready(self) -> dict[str, bool]:
        return self.inner.ready()

    async def close(self) -> None:
        await self.inner.close()

    def __getattr__(self, name: str) -> Any:  # workers(), queued(), start() of the wrapped backend
        return getattr(self.inner, name)
