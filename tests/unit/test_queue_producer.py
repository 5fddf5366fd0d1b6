"""The producer on fakeredis: blob stored once, one job per reward and chunk, dedup, fast failures."""

from __future__ import annotations

import asyncio
import time

import fakeredis
import pytest
from fakeredis import aioredis as fake_aioredis

from shared.queue import messages as q
from shared.queue.producer import NoLiveWorker, QueueError, QueueProducer, QueueTimeout, connect

SETTINGS = q.QueueSettings(visibility_timeout_s=5, heartbeat_interval_s=1, worker_ttl_s=3, outage_grace_s=1)


def _answer(sync, job: q.Job, value: float) -> bytes:
    """What a worker writes: the stored result and the announcement on the reply stream."""
    result = q.JobResult(job.id, job.request, job.reward, [value] * job.size, [None] * job.size, [None] * job.size)
    data = result.encode()
    sync.set(q.result_key(job.id), data, nx=True)
    sync.xadd(q.reply_stream(job.reply), {q.FIELD: data})
    return data


@pytest.fixture
def servers():
    server = fakeredis.FakeServer()
    return fakeredis.FakeRedis(server=server), lambda: fake_aioredis.FakeRedis(server=server)


def _alive(sync, *rewards):
    for name in rewards:
        sync.zadd(q.workers_key(name), {"w": time.time()})


def test_a_request_is_stored_once_and_cut_into_jobs_per_reward(servers):
    sync, make = servers
    _alive(sync, "a", "b")

    async def main():
        p = QueueProducer(make(), SETTINGS, ["a", "b"])
        await p.start()
        sub = await p.submit([b"s%d" % i for i in range(5)], {"a": 2, "b": 5}, timeout_s=10)
        await p.close()
        return sub

    sub = asyncio.run(main())
    assert [(j.lo, j.hi) for j in sub.jobs["a"]] == [(0, 2), (2, 4), (4, 5)]
    assert [(j.lo, j.hi) for j in sub.jobs["b"]] == [(0, 5)]
    assert sync.lrange(q.blob_key(sub.request), 0, -1) == [b"s%d" % i for i in range(5)]
    assert 0 < sync.pttl(q.blob_key(sub.request)) <= SETTINGS.blob_ttl_s * 1000
    assert sync.xlen(q.jobs_stream("a")) == 3 and sync.xlen(q.jobs_stream("b")) == 1
    assert len(sync.keys(q.blob_key("*"))) == 1


def test_results_are_matched_by_job_id_and_duplicates_ignored(servers):
    sync, make = servers
    _alive(sync, "a")

    async def main():
        p = QueueProducer(make(), SETTINGS, ["a"])
        await p.start()
        sub = await p.submit([b"x"] * 4, {"a": 2}, timeout_s=10)
        first, second = sub.jobs["a"]
        _answer(sync, second, 0.2)
        _answer(sync, first, 0.1)
        _answer(sync, first, 0.9)  # a second worker finished the same job: ignored
        results = await p.wait(sub, 10)
        await p.close()
        return results

    results = asyncio.run(main())
    assert [r.scores for r in results["a"]] == [[0.1, 0.1], [0.2, 0.2]]


def test_no_live_worker_while_waiting_fails_fast_naming_the_reward(servers):
    sync, make = servers
    sync.zadd(q.workers_key("a"), {"w": time.time() - 2.5})  # heartbeat about to expire (ttl 3s)

    async def main():
        p = QueueProducer(make(), SETTINGS, ["a"])
        await p.start()
        sub = await p.submit([b"x"], {"a": 1}, timeout_s=30)
        started = time.monotonic()
        with pytest.raises(NoLiveWorker, match=r"\['a'\]"):
            await p.wait(sub, 30)
        await p.close()
        return time.monotonic() - started

    assert asyncio.run(main()) < 3


def test_lost_request_and_timeout_are_clear_errors(servers):
    sync, make = servers
    _alive(sync, "a")

    async def main():
        p = QueueProducer(make(), SETTINGS, ["a"])
        await p.start()
        sub = await p.submit([b"x"], {"a": 1}, timeout_s=30)
        with pytest.raises(QueueTimeout, match=r"within 0.2s for rewards \['a'\]"):
            await p.wait(sub, 0.2)
        sub = await p.submit([b"x"], {"a": 1}, timeout_s=30)
        sync.flushall()  # Redis restarted without persistence
        _alive(sync, "a")
        with pytest.raises(QueueError, match="lost the request"):
            await p.wait(sub, 10)
        await p.close()

    asyncio.run(main())


def test_unreachable_redis_is_an_immediate_clear_error():
    from reward_server.serving import free_port

    async def main():
        p = QueueProducer(connect(f"redis://127.0.0.1:{free_port()}/0"), SETTINGS, ["a"])
        await p.start()
        started = time.monotonic()
        with pytest.raises(QueueError, match="unreachable"):
            await p.submit([b"x"], {"a": 1}, timeout_s=30)
        assert not p.alive("a")
        await p.close()
        return time.monotonic() - started

    assert asyncio.run(main()) < 2


class _StuckPipeline:
    """A pipeline whose execute never returns (e.g. waiting for a pooled connection)."""

    def __getattr__(self, _name):
        return lambda *a, **k: None

    async def execute(self):
        await asyncio.Event().wait()


class _StuckClient:
    def pipeline(self, transaction=True):
        return _StuckPipeline()


def test_a_submit_cancelled_while_enqueueing_leaves_no_waiting_futures():
    # the app's request timeout cancels submit mid-execute; its futures used to stay forever
    async def main():
        p = QueueProducer(_StuckClient(), SETTINGS, ["a"])
        task = asyncio.create_task(p.submit([b"s0", b"s1"], {"a": 1}, timeout_s=10))
        deadline = time.monotonic() + 5
        while not p._waiting and time.monotonic() < deadline:
            await asyncio.sleep(0)
        assert p._waiting, "submit never registered its jobs"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return p._waiting

    assert asyncio.run(main()) == {}
