"""Dynamic batching: the pure pieces, then the asyncio batcher (synchronised with events, not sleeps)."""

from __future__ import annotations

import asyncio
import gc
import inspect
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence

import numpy as np
import pytest

from reward_server.batching import (
    DynamicBatcher,
    Pending,
    regroup_plan,
    score_isolated,
    split_into_chunks,
    take_batch,
)
from reward_server.rewards.base import ScoreResult
from shared.protocol import Sample

IMAGE = np.zeros((2, 2, 3), np.uint8)


def samples(*prompts: str) -> list[Sample]:
    return [Sample(image=IMAGE, prompt=p) for p in prompts]


class Recorder:
    """A score function that records each batch's prompts and fails batches holding 'bad'."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.lock = threading.Lock()

    def __call__(self, batch: Sequence[Sample]) -> list[ScoreResult]:
        with self.lock:
            self.batches.append([s.prompt for s in batch])
        if any(s.prompt == "bad" for s in batch):
            raise RuntimeError("model choked on 'bad'")
        return [ScoreResult(float(len(s.prompt))) for s in batch]


async def wait_until(condition, timeout: float = 5.0) -> None:
    """Poll ``condition`` on the event loop until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.001)


# ------------------------------------------------------------------------------ pure pieces


def test_split_into_chunks() -> None:
    chunks = split_into_chunks(samples(*"abcdefg"), 3)
    assert [[s.prompt for s in c] for c in chunks] == [["a", "b", "c"], ["d", "e", "f"], ["g"]]
    assert split_into_chunks([], 3) == []


def test_take_batch_fills_up_to_the_limit_and_skips_abandoned() -> None:
    loop = asyncio.new_event_loop()
    try:
        queue = deque(Pending(samples(*"x" * n), loop.create_future()) for n in (2, 1, 3, 1))
        queue[1].future.cancel()  # its caller gave up
        first = take_batch(queue, 4)
        assert [len(p.samples) for p in first] == [2]  # 2 + (skipped) + 3 > 4
        assert len(queue) == 2
        second = take_batch(queue, 4)
        assert [len(p.samples) for p in second] == [3, 1]
        assert take_batch(queue, 4) == []
    finally:
        loop.close()


def test_score_isolated_fails_only_the_failing_request() -> None:
    record = Recorder()
    groups = [samples("aa", "b"), samples("bad", "ccc"), samples("dddd")]
    out = score_isolated(record, groups)
    assert [[r.score for r in g] for g in out] == [[2.0, 1.0], [None, None], [4.0]]
    assert all("model choked" in r.error for r in out[1])
    assert record.batches[0] == ["aa", "b", "bad", "ccc", "dddd"]  # tried merged first
    assert len(record.batches) == 4  # then each request alone


def test_score_isolated_catches_a_wrong_result_count() -> None:
    out = score_isolated(lambda batch: [ScoreResult(1.0)], [samples("a", "b")])
    assert out[0][0].score is None and "2 samples" in out[0][0].error


# ------------------------------------------------------------------------------ the batcher


def test_concurrent_submissions_are_merged_up_to_max_batch_size() -> None:
    record = Recorder()

    async def main() -> list[list[ScoreResult]]:
        batcher = DynamicBatcher(record, max_batch_size=4)
        try:
            return await asyncio.gather(*(batcher.submit(samples("x" * (i + 1))) for i in range(8)))
        finally:
            await batcher.close()

    results = asyncio.run(main())
    assert [r[0].score for r in results] == [float(i + 1) for i in range(8)]  # each caller its own answer
    assert [len(b) for b in record.batches] == [4, 4]  # full batches close without waiting 60 s


def test_a_large_request_is_split_and_reassembled_in_order() -> None:
    record = Recorder()

    async def main() -> list[ScoreResult]:
        batcher = DynamicBatcher(record, max_batch_size=3)
        try:
            return await batcher.submit(samples(*("x" * n for n in range(1, 8))))
        finally:
            await batcher.close()

    assert [r.score for r in asyncio.run(main())] == [float(n) for n in range(1, 8)]
    assert max(len(b) for b in record.batches) == 3


def test_a_request_that_finds_the_model_idle_runs_at_once() -> None:
    # the batch window (max_wait_ms) used to be paid by every lone caller: no timer may fire between a
    # request and an idle model (asyncio.sleep, wait_for and asyncio.timeout all schedule with call_at),
    # not even with a long regroup wait, which a lone caller's next request ends
    fired: list[object] = []
    seen_at_model: list[int] = []  # timers fired before each model call

    def score(batch: Sequence[Sample]) -> list[ScoreResult]:
        seen_at_model.append(len(fired))
        return [ScoreResult(1.0) for _ in batch]

    async def main() -> list[list[ScoreResult]]:
        loop = asyncio.get_running_loop()
        real_call_at = loop.call_at

        def call_at(when, callback, *args, **kwargs):
            def noted(*a):
                fired.append(callback)
                return callback(*a)

            return real_call_at(when, noted, *args, **kwargs)

        loop.call_at = call_at  # type: ignore[method-assign]
        batcher = DynamicBatcher(score, max_batch_size=32, regroup_ms=60_000)
        try:
            return [await batcher.submit(samples("a")), await batcher.submit(samples("b"))]
        finally:
            await batcher.close()

    assert [[r.score for r in part] for part in asyncio.run(main())] == [[1.0], [1.0]]
    assert seen_at_model == [0, 0]


def test_requests_arriving_while_the_model_is_busy_form_the_next_batch() -> None:
    entered, release = threading.Event(), threading.Event()
    record = Recorder()

    def blocking(batch: Sequence[Sample]) -> list[ScoreResult]:
        if batch[0].prompt == "first":
            entered.set()
            release.wait(10)
        return record(batch)

    async def main() -> list[list[ScoreResult]]:
        batcher = DynamicBatcher(blocking, max_batch_size=3)
        try:
            first = asyncio.ensure_future(batcher.submit(samples("first")))
            await asyncio.to_thread(entered.wait, 10)
            later = [asyncio.ensure_future(batcher.submit(samples("x" * n))) for n in (2, 3, 4, 5)]
            await wait_until(lambda: batcher.queued_samples == 4)
            release.set()  # the model frees: the waiting requests go at once, 3 then 1, no window
            return await asyncio.wait_for(asyncio.gather(first, *later), 5)
        finally:
            release.set()
            await batcher.close()

    results = asyncio.run(main())
    assert [r[0].score for r in results] == [5.0, 2.0, 3.0, 4.0, 5.0]
    assert record.batches == [["first"], ["xx", "xxx", "xxxx"], ["xxxxx"]]


def test_failing_request_in_a_merged_batch_fails_only_itself() -> None:
    record = Recorder()

    async def main() -> list[list[ScoreResult]]:
        batcher = DynamicBatcher(record, max_batch_size=8)
        try:
            return await asyncio.gather(*(batcher.submit(samples(p)) for p in ("a", "bad", "ccc")))
        finally:
            await batcher.close()

    good, bad, other = asyncio.run(main())
    assert good[0].score == 1.0 and other[0].score == 3.0
    assert bad[0].score is None and "model choked" in bad[0].error
    assert record.batches[0] == ["a", "bad", "ccc"]


def test_a_cancelled_caller_is_skipped() -> None:
    entered, release = threading.Event(), threading.Event()
    scored: list[str] = []

    def blocking(batch: Sequence[Sample]) -> list[ScoreResult]:
        scored.extend(s.prompt for s in batch)
        if batch[0].prompt == "first":
            entered.set()
            release.wait(10)
        return [ScoreResult(1.0) for _ in batch]

    async def main() -> list[ScoreResult]:
        batcher = DynamicBatcher(blocking, max_batch_size=1)
        try:
            first = asyncio.ensure_future(batcher.submit(samples("first")))
            await asyncio.to_thread(entered.wait, 10)
            gone = asyncio.ensure_future(batcher.submit(samples("gone")))
            kept = asyncio.ensure_future(batcher.submit(samples("kept")))
            await wait_until(lambda: batcher.queued_samples == 2)
            gone.cancel()
            with pytest.raises(asyncio.CancelledError):
                await gone
            assert batcher.queued_samples == 1
            release.set()
            await first
            return await kept
        finally:
            release.set()
            await batcher.close()

    assert [r.score for r in asyncio.run(main())] == [1.0]
    assert scored == ["first", "kept"]


def test_observer_sees_batch_sizes_and_failures() -> None:
    seen: list[tuple[int, bool]] = []

    async def main() -> None:
        batcher = DynamicBatcher(
            Recorder(),
            max_batch_size=4,
            observer=lambda n, s, failed: seen.append((n, failed)),
        )
        try:
            await asyncio.gather(*(batcher.submit(samples(p)) for p in ("a", "b", "c", "bad")))
        finally:
            await batcher.close()

    asyncio.run(main())
    assert seen == [(4, True)]


def test_empty_submission_returns_at_once() -> None:
    async def main() -> list[ScoreResult]:
        batcher = DynamicBatcher(Recorder(), max_batch_size=4)
        try:
            return await batcher.submit([])
        finally:
            await batcher.close()

    assert asyncio.run(main()) == []


def test_close_releases_callers_whose_batch_is_on_the_model_thread() -> None:
    # close() used to cancel only queued chunks: a caller whose batch was being scored waited forever
    entered, release = threading.Event(), threading.Event()

    def blocking(batch: Sequence[Sample]) -> list[ScoreResult]:
        entered.set()
        release.wait(10)
        return [ScoreResult(1.0) for _ in batch]

    async def main() -> None:
        batcher = DynamicBatcher(blocking, max_batch_size=4)
        caller = asyncio.ensure_future(batcher.submit(samples("a", "b")))
        try:
            await asyncio.to_thread(entered.wait, 10)
            await batcher.close()
            done, _ = await asyncio.wait([caller], timeout=5)
            assert done, "the caller still waits after close()"
            with pytest.raises(asyncio.CancelledError):
                caller.result()
        finally:
            release.set()

    asyncio.run(main())


def test_a_caller_that_gives_up_leaves_the_queue_at_once() -> None:
    # its chunk (and the decoded images in it) stayed queued until the model freed, though the pixel
    # budget had already let those pixels go: with the model stuck, timed-out requests piled up in memory
    entered, release = threading.Event(), threading.Event()

    def blocking(batch: Sequence[Sample]) -> list[ScoreResult]:
        entered.set()
        release.wait(10)
        return [ScoreResult(1.0) for _ in batch]

    async def main() -> bool:
        batcher = DynamicBatcher(blocking, max_batch_size=1)
        try:
            first = asyncio.ensure_future(batcher.submit(samples("first")))
            await asyncio.to_thread(entered.wait, 10)
            image = np.zeros((8, 8, 3), np.uint8)
            alive = weakref.ref(image)
            gone = asyncio.ensure_future(batcher.submit([Sample(image=image, prompt="gone")]))
            await wait_until(lambda: batcher.queued_samples == 1)
            del image
            gone.cancel()
            await asyncio.wait([gone])
            del gone
            gc.collect()
            freed = alive() is None
            release.set()
            await first
            return freed
        finally:
            release.set()
            await batcher.close()

    assert asyncio.run(main()), "the cancelled caller's image is still referenced by the batcher"


def test_whatever_the_model_thread_raises_the_callers_get_an_answer_and_the_next_batch_runs() -> None:
    # SystemExit from a model (score_isolated catches Exception only) and an observer that raised both
    # left the callers waiting until their timeout and the batcher busy
    calls: list[str] = []

    def exits_on_first(batch: Sequence[Sample]) -> list[ScoreResult]:
        calls.append(batch[0].prompt)
        if batch[0].prompt == "exit":
            raise SystemExit(3)
        return [ScoreResult(1.0) for _ in batch]

    def broken_observer(n: int, seconds: float, failed: bool) -> None:
        raise RuntimeError("metrics broke")

    async def main() -> tuple[list[ScoreResult], list[ScoreResult]]:
        batcher = DynamicBatcher(exits_on_first, max_batch_size=4, observer=broken_observer)
        try:
            first = await asyncio.wait_for(batcher.submit(samples("exit")), 5)
            second = await asyncio.wait_for(batcher.submit(samples("next")), 5)
            return first, second
        finally:
            await batcher.close()

    first, second = asyncio.run(main())
    assert first[0].score is None and "SystemExit" in first[0].error
    assert [r.score for r in second] == [1.0] and calls == ["exit", "next"]


# ------------------------------------------------------------------------------ regrouping


def test_regroup_plan_is_the_readme_rule() -> None:
    # README "Batching and memory": wait until as many samples wait as the batch just finished plus
    # those already waiting (at most max_batch_size), for at most max_wait_ms and a quarter of the
    # model time of that batch; no wait when enough wait already
    assert inspect.signature(DynamicBatcher).parameters["regroup_share"].default == 0.25
    assert regroup_plan(3, 4, 0.2, 32, 0.010, 0.25) == (0.010, 7)  # max_wait_ms binds
    assert regroup_plan(3, 4, 0.02, 32, 0.010, 0.25) == (0.005, 7)  # a quarter of 20 ms binds
    assert regroup_plan(30, 4, 0.2, 32, 0.010, 0.25) == (0.010, 32)  # a full batch ends it
    assert regroup_plan(32, 4, 0.2, 32, 0.010, 0.25) == (0.0, 32)  # already full: no wait
    assert regroup_plan(0, 1, 0.2, 32, 0.0, 0.25) == (0.0, 1)  # max_wait_ms 0: never


class SlowRecorder(Recorder):
    """A Recorder whose every model call takes ``seconds``."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def __call__(self, batch: Sequence[Sample]) -> list[ScoreResult]:
        time.sleep(self.seconds)
        return super().__call__(batch)


async def closed_loop(batcher: DynamicBatcher, callers: int, requests: int, think_s: float) -> None:
    """``callers`` each send ``requests`` one-sample requests, each after its answer plus a
    think time that differs per caller (as answers and new requests spread over an HTTP server)."""

    async def caller(i: int) -> None:
        for _ in range(requests):
            await asyncio.sleep(think_s * i / callers)
            await batcher.submit(samples("x"))

    await asyncio.wait_for(asyncio.gather(*(caller(i) for i in range(callers))), 30)


@pytest.mark.parametrize("regroup_ms", [0.0, 50.0])
def test_callers_returning_after_their_answer_regroup_into_full_batches(regroup_ms: float) -> None:
    # without the regroup wait, 8 closed-loop callers split for good into a batch of the first
    # caller back and one of the others: the model works on small batches at half efficiency
    model = SlowRecorder(0.03)

    async def main() -> None:
        batcher = DynamicBatcher(model, max_batch_size=32, regroup_ms=regroup_ms, regroup_share=1.0)
        try:
            await closed_loop(batcher, callers=8, requests=6, think_s=0.004)
        finally:
            await batcher.close()

    asyncio.run(main())
    later = [len(b) for b in model.batches[2:-1]]  # past the staggered start, before the end
    if regroup_ms:
        assert later and all(n == 8 for n in later), later
    else:
        assert later and max(later) < 8, later  # the split this wait exists to undo


def test_a_lone_caller_never_waits_for_a_regroup() -> None:
    # the wait ends when as many samples wait as the batch just finished had: a lone caller's own
    # next request ends it at once, however long regroup_ms is
    model = SlowRecorder(0.005)

    async def main() -> float:
        batcher = DynamicBatcher(model, max_batch_size=32, regroup_ms=5_000, regroup_share=1.0)
        try:
            started = time.monotonic()
            await closed_loop(batcher, callers=1, requests=20, think_s=0.0)
            return time.monotonic() - started
        finally:
            await batcher.close()

    assert asyncio.run(main()) < 2.5  # 20 x 5 ms of model; a regroup wait would cost 20 x 5 s


def test_the_regroup_wait_is_bounded_by_the_model_time() -> None:
    # two callers answered together, only one comes back: it waits for the other at most
    # regroup_share of the last batch's model time, not regroup_ms
    model = SlowRecorder(0.02)

    async def main() -> float:
        batcher = DynamicBatcher(model, max_batch_size=32, regroup_ms=5_000, regroup_share=1.0)
        try:
            await asyncio.gather(batcher.submit(samples("a")), batcher.submit(samples("b")))
            started = time.monotonic()
            await asyncio.wait_for(batcher.submit(samples("c")), 10)
            return time.monotonic() - started
        finally:
            await batcher.close()

    assert asyncio.run(main()) < 2.5
    assert [len(b) for b in model.batches] == [2, 1]
