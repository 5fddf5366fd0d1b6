"""Redis specifics: a password in the URL, a wrong one refused clearly, bursts beyond the pool size."""

from __future__ import annotations

import asyncio

import pytest

from shared.queue import messages as q
from shared.queue.producer import QueueError, QueueProducer, connect
from tests import queue_helpers
from tests.queue_helpers import Front, RedisServer, ThreadWorker, score_request, write_config
from tests.servers import require_binary

redis_server = queue_helpers.redis_server  # fixture


def test_password_in_the_url_is_used_and_a_wrong_one_is_refused_clearly(tmp_path):
    require_binary("redis-server")
    server = RedisServer(tmp_path, password="s3cret-" + "p" * 16)
    server.start()
    try:
        cfg = write_config(tmp_path / "rewards.yaml", {"bright": {"type": "brightness"}})
        with ThreadWorker(cfg, server.url):
            front = Front(cfg, server.url, timeout_s=10)
            try:
                answer = front.submit(score_request(["a"], {"bright": 1.0})).result(10)
            finally:
                front.close()
        assert answer.errors == [] and answer.scores["bright"] == [pytest.approx(100 / 255)]

        async def wrong_password() -> None:
            producer = QueueProducer(connect(server.url.replace("s3cret", "wrong")), q.QueueSettings())
            await producer.start()
            try:
                with pytest.raises(QueueError, match=r"(?i)password|auth"):
                    await producer.submit([b"x"], {"bright": 1}, timeout_s=5)
            finally:
                await producer.close()

        asyncio.run(wrong_password())
    finally:
        server.stop()


def test_a_burst_larger_than_the_connection_pool_waits_instead_of_failing(tmp_path):
    require_binary("redis-server")
    server = RedisServer(tmp_path)
    server.start()
    cfg = write_config(tmp_path / "rewards.yaml", {"bright": {"type": "brightness", "max_batch_size": 64}})
    sample = q.encode_wire_sample(score_request(["p"], {"bright": 1.0}).samples[0])

    async def burst() -> list:
        producer = QueueProducer(connect(server.url, max_connections=3), q.QueueSettings(), ["bright"])
        await producer.start()
        try:
            async def one():
                sub = await producer.submit([sample], {"bright": 1}, timeout_s=20)
                return await producer.wait(sub, 20)
            return await asyncio.gather(*(one() for _ in range(40)))
        finally:
            await producer.close()

    try:
        with ThreadWorker(cfg, server.url):
            answers = asyncio.run(burst())
    finally:
        server.stop()
    assert len(answers) == 40 and all(a["bright"][0].scores == [pytest.approx(100 / 255)] for a in answers)


def test_claims_find_a_dead_workers_job_behind_many_live_ones_on_real_redis(redis_server):
    """Real Redis scans only 10 x COUNT pending entries per XAUTOCLAIM call; our claim must not."""
    from tests.unit.test_queue_worker import _age, _consumer, _enqueue, _reward

    r = redis_server.client()
    live = _consumer(r, _reward(max_batch=1), name="live")
    _enqueue(r, [f"p{i}" for i in range(30)], chunk=1)
    for _ in range(30):
        live._read(1, None)
    dead = _consumer(r, _reward(), name="dead")
    job = _enqueue(r, ["lost"], chunk=1)[0]
    dead._read(1, None)
    _age(r, dead)
    other = _consumer(r, _reward(), name="other")
    other.claim()
    assert [(d.job.id, d.attempts) for d in other._retries] == [(job.id, 2)]
