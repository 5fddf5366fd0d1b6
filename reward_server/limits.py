"""Limits that protect the process: samples queued per caller (429) and decoded pixels in flight (503).

* ``CallerLimiter``: a caller may have at most N samples waiting; more is 429 + Retry-After.
* ``PixelBudget``: all requests together may hold at most N decoded pixels; a request that does
  not fit waits briefly, then gets 503 + Retry-After. ``BlockingPixelBudget`` is its twin for
  queue workers, ``release_memory`` gives freed memory back to the OS after large requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import threading
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
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
        caller, n = CURRENT_CALLER.get(), len(request.samples)  # a remote backend gets no decoded samples
        self.limiter.reserve(caller, n)
        try:
            return await self.inner.run(request, samples, rewards)
        finally:
            self.limiter.release(caller, n)

    def ready(self) -> dict[str, bool]:
        return self.inner.ready()

    async def close(self) -> None:
        await self.inner.close()

    def __getattr__(self, name: str) -> Any:  # workers(), queued(), start() of the wrapped backend
        return getattr(self.inner, name)


# -- memory: decoded pixels in flight ---------------------------------------------------------------


class ServerBusy(RuntimeError):
    """The process already holds as many decoded pixels as it may (503 + Retry-After)."""

    def __init__(self, pixels: int, in_use: int, capacity: int, waited_s: float, retry_after_s: float):
        self.retry_after_s = retry_after_s
        super().__init__(
            f"the server is busy: this request's images decode to {pixels} pixels, and {in_use} of the "
            f"{capacity} pixels it may hold at once (limits.max_pixels_in_flight) stayed in use for "
            f"{waited_s:g}s; retry after {retry_after_s:g}s"
        )


class PixelBudget:
    """Admission control for the event loop: decoded pixels held by the requests in flight.

    A request reserves the pixels its images decode to (read from their headers) before any
    is decoded, and holds them until its answer is assembled. Requests that do not fit wait in
    arrival order, at most ``wait_s``, then get ``ServerBusy`` (503 + Retry-After). One request
    alone always fits (``max_request_pixels`` <= capacity, checked by the config)."""

    def __init__(self, capacity: int, wait_s: float = 2.0, retry_after_s: float = 1.0):
        self.capacity = capacity
        self.wait_s = wait_s
        self.retry_after_s = retry_after_s
        self.in_use = 0
        self.refused = 0
        self._waiters: deque[tuple[int, asyncio.Future]] = deque()

    @asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        await self._acquire(pixels)
        try:
            yield
        finally:
            self.in_use -= pixels
            self._wake()

    async def _acquire(self, pixels: int) -> None:
        if not self._waiters and self.in_use + pixels <= self.capacity:
            self.in_use += pixels
            return
        waiter = asyncio.get_running_loop().create_future()
        entry = (pixels, waiter)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.wait_s)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if waiter.done() and not waiter.cancelled():  # granted just as we gave up: give it back
                self.in_use -= pixels
            else:
                waiter.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)
            self._wake()
            if isinstance(exc, asyncio.CancelledError):
                raise
            self.refused += 1
            raise ServerBusy(pixels, self.in_use, self.capacity, self.wait_s, self.retry_after_s) from None

    def _wake(self) -> None:
        """Grant waiting requests in arrival order while they fit."""
        while self._waiters:
            pixels, waiter = self._waiters[0]
            if waiter.done():
                self._waiters.popleft()
                continue
            if self.in_use + pixels > self.capacity:
                return
            self._waiters.popleft()
            self.in_use += pixels
            waiter.set_result(None)


class BlockingPixelBudget:
    """The same budget for threads (queue workers): waits as long as it takes, refuses nothing."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.in_use = 0
        self._free = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = min(pixels, self.capacity)  # one job alone always fits
        with self._free:
            self._free.wait_for(lambda: self.in_use + pixels <= self.capacity)
            self.in_use += pixels
        try:
            yield
        finally:
            with self._free:
                self.in_use -= pixels
                self._free.notify_all()


# After a request (or worker batch) whose images held this many pixels (48 MB decoded), freed
# memory goes back to the OS.
RELEASE_AFTER_PIXELS = 1 << 24


def release_memory() -> bool:
    """Hand freed heap memory back to the operating system (glibc ``malloc_trim``; False elsewhere).

    Decoded images are freed after each request, but glibc keeps freed chunks below its mmap
    threshold (which grows to 32 MB after a large free) in the process: without a trim the RSS
    stays near its peak after a large request."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    return bool(_LIBC) and bool(_LIBC.malloc_trim(0))


_LIBC: Any = None
