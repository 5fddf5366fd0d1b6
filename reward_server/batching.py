"""Dynamic batching: merge requests from many callers into model-sized batches.

The pure pieces (``split_into_chunks``, ``take_batch``, ``score_isolated``) are tested without
a server; ``DynamicBatcher`` wires them to asyncio: a batch closes when it holds
``max_batch_size`` samples or its oldest request has waited ``max_wait_ms``. Model work runs
in one thread per reward, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from reward_server.rewards.base import ScoreResult
from shared.protocol import Sample

log = logging.getLogger(__name__)

T = TypeVar("T")
ScoreFn = Callable[[Sequence[Sample]], list[ScoreResult]]
BatchObserver = Callable[[int, float, bool], None]  # (batch size, seconds, failed)


@dataclass
class Pending:
    """A chunk of one request waiting for a batch."""

    samples: list[Sample]
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


def split_into_chunks(samples: Sequence[Sample], max_batch_size: int) -> list[list[Sample]]:
    """Cut a request into pieces that each fit in one batch."""
    return [list(samples[i : i + max_batch_size]) for i in range(0, len(samples), max_batch_size)]


def take_batch(queue: deque[Pending], max_batch_size: int) -> list[Pending]:
    """Pop pending chunks from the front while they fit; drops chunks whose caller gave up."""
    batch: list[Pending] = []
    size = 0
    while queue:
        head = queue[0]
        if head.future.done():  # cancelled or timed out: nobody waits for it
            queue.popleft()
            continue
        if batch and size + len(head.samples) > max_batch_size:
            break
        batch.append(queue.popleft())
        size += len(head.samples)
    return batch


def _check_count(results: list[ScoreResult], expected: int) -> list[ScoreResult]:
    if len(results) != expected:
        raise RuntimeError(f"reward returned {len(results)} results for {expected} samples")
    return results


def score_isolated(score: ScoreFn, groups: list[list[Sample]]) -> list[list[ScoreResult]]:
    """Score several requests' samples in one call; if it raises, score each request alone.

    So a request that makes the model raise fails only its own samples.
    """
    flat = [s for g in groups for s in g]
    try:
        results = _check_count(score(flat), len(flat))
    except Exception as exc:
        if len(groups) == 1:
            log.warning("reward batch of %d failed: %r", len(flat), exc)
            return [[ScoreResult.failed(f"reward raised {type(exc).__name__}: {exc}") for _ in groups[0]]]
        return [score_isolated(score, [g])[0] for g in groups]
    out, start = [], 0
    for g in groups:
        out.append(results[start : start + len(g)])
        start += len(g)
    return out


class DynamicBatcher:
    """Collects samples for one reward and scores them in batches on a dedicated thread."""

    def __init__(
        self,
        score: ScoreFn,
        max_batch_size: int,
        max_wait_ms: float,
        name: str = "reward",
        observer: BatchObserver | None = None,
    ):
        self._score = score
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.name = name
        self._observer = observer
        self._queue: deque[Pending] = deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"reward-{name}")
        self._task: asyncio.Task | None = None
        self._scoring: list[Pending] = []  # the batch on the model thread now (close() releases it)

    @property
    def queued_samples(self) -> int:
        """Samples waiting for a batch (for metrics and back-pressure)."""
        return sum(len(p.samples) for p in self._queue if not p.future.done())

    async def run_on_model_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on this reward's model thread. Loading the model there too matters on the
        CPU: torch's OpenMP team belongs to the thread that made it, and a second team (one
        thread loading, another scoring) spins against the first -- 2x slower on 2 cores."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def submit(self, samples: Sequence[Sample]) -> list[ScoreResult]:
        """Score ``samples`` (any number), batched with whatever else is waiting."""
        if not samples:
            return []
        self._ensure_running()
        loop = asyncio.get_running_loop()
        pending = [Pending(chunk, loop.create_future()) for chunk in split_into_chunks(samples, self.max_batch_size)]
        self._queue.extend(pending)
        self._wakeup.set()
        try:
            parts = await asyncio.gather(*(p.future for p in pending))
        finally:
            for p in pending:  # a caller that gave up frees its place in the queue
                if not p.future.done():
                    p.future.cancel()
        return [r for part in parts for r in part]

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    async def _wait_for_batch(self) -> None:
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = self._queue[0].arrived + self.max_wait
        while self.queued_samples < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    async def _loop(self) -> None:
        while True:
            await self._wait_for_batch()
            batch = take_batch(self._queue, self.max_batch_size)
            if not batch:
                continue
            groups = [p.samples for p in batch]
            self._scoring = batch
            started = time.monotonic()
            try:
                results = await self.run_on_model_thread(score_isolated, self._score, groups)
            except Exception as exc:  # score_isolated catches model errors; this is a bug guard
                log.exception("batcher %s crashed", self.name)
                results = [[ScoreResult.failed(f"internal error: {exc!r}") for _ in g] for g in groups]
            if self._observer is not None:
                failed = any(r.score is None for part in results for r in part)
                self._observer(sum(len(g) for g in groups), time.monotonic() - started, failed)
            for pending, part in zip(batch, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result(part)
            self._scoring = []

    async def close(self) -> None:
        """Stop the loop and the model thread (pending callers are cancelled)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for p in [*self._queue, *self._scoring]:
            p.future.cancel()
        self._queue.clear()
        self._scoring = []
        self._executor.shutdown(wait=False, cancel_futures=True)
