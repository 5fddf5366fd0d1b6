"""Dynamic batching: merge requests from many callers into model-sized batches.

The pure pieces (``split_into_chunks``, ``take_batch``, ``score_isolated``) are tested without
a server; ``DynamicBatcher`` wires them to asyncio. Batching costs nothing when the model is
idle: a request that finds it idle is scored at once (at the end of the current event-loop
iteration, so requests that arrived together still share a batch), and what arrives while
the model is busy forms the next batch, of at most ``max_batch_size`` samples, which starts
when the model frees. A lone caller never pays a window.

One wait exists, and only under load: when the model frees, the callers it just answered are
about to send their next requests, and starting the waiting ones without them splits a closed
loop of callers into half batches for good (8 callers, batches of 4, 4, 4, ...). So the next
batch waits for them -- until as many samples wait as the one just finished plus those already
waiting (or ``max_batch_size``), and never longer than ``regroup_ms`` nor ``regroup_share`` of
the model time of the batch just finished (so at most ~10% of the model's time goes idle, and a
fast model barely waits). Model work runs on one thread per reward, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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


def regroup_plan(waiting: int, finished: int, model_seconds: float, max_batch_size: int,
                 regroup_s: float, share: float) -> tuple[float, int]:
    """When the model frees: how long the next batch waits for the callers just answered, and
    how many waiting samples end that wait early (0 s when enough wait already)."""
    target = min(max_batch_size, waiting + finished)
    wait = min(regroup_s, share * model_seconds)
    return (wait if waiting < target else 0.0), target


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
        regroup_ms: float = 0.0,
        regroup_share: float = 0.25,
    ):
        self._score = score
        self.max_batch_size = max_batch_size
        self.regroup_s = regroup_ms / 1000.0
        self.regroup_share = regroup_share
        self.name = name
        self._observer = observer
        self._queue: deque[Pending] = deque()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"reward-{name}")
        self._busy = False  # a batch is on the model thread
        self._dispatch_scheduled = False
        self._closed = False
        self._scoring: list[Pending] = []  # the batch on the model thread now (close() releases it)
        self._regroup: asyncio.TimerHandle | None = None  # the next batch waits for returning callers
        self._regroup_target = 0  # samples that end the wait early

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
        if self._regroup is not None:
            if self.queued_samples >= self._regroup_target:
                self._regroup.cancel()
                self._regroup = None
                self._schedule_dispatch(loop)
        elif not self._busy:
            self._schedule_dispatch(loop)
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

    def _schedule_dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._dispatch_scheduled:
            self._dispatch_scheduled = True
            loop.call_soon(self._dispatch, loop)  # after the requests that arrived with this one

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Send the next batch to the model thread, if the model is free and anything waits."""
        self._dispatch_scheduled = False
        self._regroup = None
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
        finished = sum(len(p.samples) for p in batch)
        wait, target = regroup_plan(self.queued_samples, finished, seconds, self.max_batch_size,
                                    self.regroup_s, self.regroup_share)
        if wait > 0:  # the callers just answered are about to come back
            self._regroup_target = target
            self._regroup = loop.call_later(wait, self._dispatch, loop)
        else:
            self._dispatch(loop)
        if self._observer is not None:
            failed = any(r.score is None for part in outcome for r in part)
            try:
                self._observer(finished, seconds, failed)
            except Exception:  # metrics must not stall scoring
                log.exception("batch observer of %s failed", self.name)

    async def close(self) -> None:
        """Stop scoring and the model thread (pending callers are cancelled)."""
        self._closed = True
        if self._regroup is not None:
            self._regroup.cancel()
            self._regroup = None
        for p in [*self._queue, *self._scoring]:
            p.future.cancel()
        self._queue.clear()
        self._scoring = []
        self._executor.shutdown(wait=False, cancel_futures=True)
