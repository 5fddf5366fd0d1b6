"""Dynamic batching: merge requests from many callers into model-sized batches.

The pure pieces (``split_into_chunks``, ``take_batch``, ``score_isolated``) are tested without
a server; ``DynamicBatcher`` wires them to asyncio. Batching costs nothing when the model is
idle: a request that finds it idle is scored at once (at the end of the current event-loop
iteration, so requests that arrived together still share a batch), and what arrives while
the model is busy forms the next batch, of at most ``max_batch_size`` samples, which starts
the moment the model frees. No batch is ever held back by a timer: under load the batches
grow by themselves, and a lone caller never pays a window. Model work runs on one thread per
reward, never on the event loop.
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


@dataclass(eq=False)  # compared by identity: a caller that gives up removes its own chunks from the queue
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
        name: str = "reward",
        observer: BatchObserver | None = None,
    ):
        self._score = score
        self.max_batch_size = max_batch_size
        self.name = name
        self._observer = observer
        self._queue: deque[Pending] = deque()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"reward-{name}")
        self._busy = False  # a batch is on the model thread
        self._dispatch_scheduled = False
        self._closed = False
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
        if self._closed:
            raise RuntimeError(f"the batcher of reward {self.name!r} is closed")
        loop = asyncio.get_running_loop()
        pending = [Pending(chunk, loop.create_future()) for chunk in split_into_chunks(samples, self.max_batch_size)]
        self._queue.extend(pending)
        if not self._busy and not self._dispatch_scheduled:
            self._dispatch_scheduled = True
            loop.call_soon(self._dispatch, loop)  # after the requests that arrived with this one
        try:
            if len(pending) == 1:
                return await pending[0].future
            parts = await asyncio.gather(*(p.future for p in pending))
        finally:
            for p in pending:  # a caller that gave up leaves the queue now: its images are freed with it
                if not p.future.done():
                    p.future.cancel()
                if p.future.cancelled():  # (cancelling the caller's task cancels the future it awaits)
                    with contextlib.suppress(ValueError):  # already taken for a batch
                        self._queue.remove(p)
        return [r for part in parts for r in part]

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Send the next batch to the model thread, if the model is free and anything waits."""
        self._dispatch_scheduled = False
        if self._busy or self._closed:
            return
        batch = take_batch(self._queue, self.max_batch_size)
        if not batch:
            return
        self._busy = True
        self._scoring = batch
        groups = [p.samples for p in batch]

        def work() -> None:  # on the model thread; hands the outcome back to the loop in one hop
            started = time.monotonic()
            try:
                outcome: list[list[ScoreResult]] | BaseException = score_isolated(self._score, groups)
            except BaseException as exc:  # score_isolated catches model errors; SystemExit & co. must not
                log.exception("batcher %s crashed", self.name)  # leave the batcher busy for ever
                outcome = exc
            seconds = time.monotonic() - started
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
                loop.call_soon_threadsafe(self._finish, loop, batch, outcome, seconds)

        self._executor.submit(work)

    def _finish(self, loop: asyncio.AbstractEventLoop, batch: list[Pending],
                outcome: list[list[ScoreResult]] | BaseException, seconds: float) -> None:
        self._busy = False
        self._scoring = []
        if isinstance(outcome, BaseException):
            outcome = [[ScoreResult.failed(f"internal error: {outcome!r}") for _ in p.samples] for p in batch]
        for pending, part in zip(batch, outcome, strict=True):
            if not pending.future.done():
                pending.future.set_result(part)
        self._dispatch(loop)  # what arrived meanwhile starts now: the model never idles while work waits
        if self._observer is not None:
            failed = any(r.score is None for part in outcome for r in part)
            try:
                self._observer(sum(len(p.samples) for p in batch), seconds, failed)
            except Exception:  # metrics must not stall scoring
                log.exception("batch observer of %s failed", self.name)

    async def close(self) -> None:
        """Stop scoring and the model thread (pending callers are cancelled)."""
        self._closed = True
        for p in [*self._queue, *self._scoring]:
            p.future.cancel()
        self._queue.clear()
        self._scoring = []
        self._executor.shutdown(wait=False, cancel_futures=True)
