"""The worker's consumer step by step on fakeredis: batching, results, claims, dead letters."""

from __future__ import annotations

import threading
import time

import fakeredis
import numpy as np
import pytest

from reward_server.config import RewardSpec
from reward_server.queue.consumer import Delivery, RewardConsumer
from reward_server.rewards.synthetic import FixedCostReward
from shared.images import encode_image
from shared.protocol import SampleIn, pack, unpack
from shared.queue import messages as q

SETTINGS = q.QueueSettings(visibility_timeout_s=5, heartbeat_interval_s=1, worker_ttl_s=3, max_attempts=2)


def _reward(max_batch=4, **options) -> FixedCostReward:
    reward = FixedCostReward("fc", RewardSpec(type="fixed_cost", max_batch_size=max_batch, max_wait_ms=0,
                                              options=options))
    reward.load()
    return reward


def _consumer(r, reward, name="w1", settings=SETTINGS) -> RewardConsumer:
    c = RewardConsumer(r, reward, settings, name, threading.Event())
    c.ensure_group()
    return c


def _enqueue(r, prompts: list[str], chunk: int, reward="fc", front="front", deadline=0.0) -> list[q.Job]:
    request = q.new_id()
    image = encode_image(np.zeros((2, 3, 3), np.uint8))
    r.rpush(q.blob_key(request), *[q.encode_wire_sample(SampleIn(image=image, prompt=p)) for p in prompts])
    jobs = [q.Job(q.new_id(), request, reward, lo, min(lo + chunk, len(prompts)), front, deadline=deadline)
            for lo in range(0, len(prompts), chunk)]
    for job in jobs:
        r.xadd(q.jobs_stream(reward), {q.FIELD: job.encode()})
    return jobs


def _age(r, consumer: RewardConsumer, seconds: float = 60) -> None:
    """Make every entry the consumer holds look idle for ``seconds`` (as if its worker died)."""
    pending = r.xpending_range(consumer.stream, q.GROUP, "-", "+", 100, consumername=consumer.worker_id)
    ids = [p["message_id"] for p in pending]
    if ids:  # JUSTID: does not count a delivery
        r.xclaim(consumer.stream, q.GROUP, consumer.worker_id, 0, ids, idle=int(seconds * 1000), justid=True)


def _results(r, front="front") -> list[q.JobResult]:
    return [q.JobResult.decode(f[q.FIELD.encode()]) for _, f in r.xrange(q.reply_stream(front))]


@pytest.fixture
def r():
    return fakeredis.FakeRedis()


def test_jobs_are_merged_into_batches_up_to_the_max_size_and_answered(r):
    c = _consumer(r, _reward(max_batch=4))
    calls = []
    original = c.reward.score
    c.reward.score = lambda samples: calls.append(len(samples)) or original(samples)
    _enqueue(r, ["a", "bb", "ccc"], chunk=1)  # three one-sample jobs
    _enqueue(r, ["dddd", "eeeee"], chunk=2)   # one two-sample job: does not fit with the three
    c.step()
    c.step()
    assert calls == [3, 2]
    results = {tuple(res.scores) for res in _results(r)}
    assert results == {(0.1,), (0.2,), (0.3,), (0.4, 0.5)}
    assert r.xlen(q.jobs_stream("fc")) == 0 and c.held() == []  # acknowledged and deleted
    assert all(r.get(q.result_key(res.id)) for res in _results(r))


def test_failures_are_per_sample_with_reasons_and_missing_images_are_reported(r):
    c = _consumer(r, _reward(error_on="bad"))
    jobs = _enqueue(r, ["ok", "bad"], chunk=2)
    r.delete(q.blob_key(_enqueue(r, ["gone"], chunk=1)[0].request))  # its images expired
    c.step()
    c.step()
    by_id = {res.id: res for res in _results(r)}
    ok = by_id[jobs[0].id]
    assert ok.scores == [0.2, None] and "told to fail" in ok.errors[1]
    [gone] = [res for res in by_id.values() if res.id != jobs[0].id]
    assert gone.scores == [None] and "gone from Redis" in gone.errors[0]


def test_a_raising_batch_fails_only_its_own_job(r):
    c = _consumer(r, _reward(max_batch=8, fail_on="boom"))
    good = _enqueue(r, ["fine", "also"], chunk=2)[0]
    bad = _enqueue(r, ["boom"], chunk=1)[0]
    c.step()
    by_id = {res.id: res for res in _results(r)}
    assert by_id[good.id].scores == [0.4, 0.4]
    assert by_id[bad.id].scores == [None] and "RuntimeError" in by_id[bad.id].errors[0]


def test_jobs_of_a_dead_worker_are_claimed_then_dead_lettered_after_max_attempts(r):
    dead = _consumer(r, _reward(), name="dead")
    job = _enqueue(r, ["x"], chunk=1)[0]
    assert [d.job.id for d in dead._read(10, None)] == [job.id]  # read, then the worker "dies"
    alive = _consumer(r, _reward(), name="alive")
    alive.claim()
    assert not alive._retries  # not idle for the visibility timeout yet: its owner may be alive
    _age(r, dead)
    alive._next_claim = 0.0
    alive.claim()
    [claimed] = alive._retries
    assert claimed.attempts == 2 and claimed.job.id == job.id
    alive._retries.clear()  # the claimant dies too before answering
    _age(r, alive)
    third = _consumer(r, _reward(), name="third")
    third.step()  # third delivery > max_attempts=2: given up without scoring
    [result] = _results(r)
    assert result.scores == [None] and "max_attempts=2" in result.errors[0] and result.attempts == 3
    [(_, entry)] = r.xrange(q.dead_stream("fc"))
    assert unpack(entry[q.FIELD.encode()])["job"]["id"] == job.id
    assert r.xlen(q.jobs_stream("fc")) == 0


def test_claimed_jobs_are_scored_one_per_batch_to_isolate_a_poison_job(r):
    dead = _consumer(r, _reward(max_batch=4), name="dead")
    jobs = _enqueue(r, ["a", "b", "c"], chunk=1)
    dead._read(10, None)
    _age(r, dead)
    alive = _consumer(r, _reward(max_batch=4), name="alive")
    sizes = []
    original = alive.reward.score
    alive.reward.score = lambda samples: sizes.append(len(samples)) or original(samples)
    for _ in jobs:
        alive.step()
    assert sizes == [1, 1, 1] and len(_results(r)) == 3
    assert all(res.attempts == 2 for res in _results(r))


def test_the_heartbeat_lease_renewal_keeps_a_slow_job_from_being_claimed(r):
    owner = _consumer(r, _reward(), name="owner")
    _enqueue(r, ["x"], chunk=1)
    owner._read(10, None)
    _age(r, owner)  # as old as a dead worker's job...
    r.xclaim(owner.stream, q.GROUP, "owner", 0, owner.held(), justid=True)  # ...but the heartbeat renewed it
    other = _consumer(r, _reward(), name="other")
    other.claim()
    assert not other._retries
    _age(r, owner)  # no renewal: now it is claimed
    other._next_claim = 0.0
    other.claim()
    assert len(other._retries) == 1


def test_expired_jobs_are_answered_without_scoring(r):
    c = _consumer(r, _reward())
    c.reward.score = lambda samples: pytest.fail("an expired job must not be scored")
    _enqueue(r, ["x", "y"], chunk=2, deadline=time.time() - 1)
    c.step()
    [result] = _results(r)
    assert result.scores == [None, None] and "expired" in result.errors[0]


def test_malformed_entries_are_dead_lettered_not_retried(r):
    c = _consumer(r, _reward())
    r.xadd(q.jobs_stream("fc"), {q.FIELD: pack({"v": 99})})
    r.xadd(q.jobs_stream("fc"), {"other": b"x"})
    c.step()
    c.step()
    assert r.xlen(q.jobs_stream("fc")) == 0 and r.xlen(q.dead_stream("fc")) == 2
    reasons = [unpack(f[q.FIELD.encode()])["reason"] for _, f in r.xrange(q.dead_stream("fc"))]
    assert "version 99" in reasons[0] and "no job field" in reasons[1]


def test_results_survive_a_redis_error_and_are_written_on_the_next_step(r, monkeypatch):
    import redis

    c = _consumer(r, _reward())
    job = _enqueue(r, ["abc"], chunk=1)[0]
    batch = c.next_batch()
    real = c.r.pipeline

    class Broken:
        def __init__(self, *a, **k):
            self.p = real(*a, **k)

        def __getattr__(self, name):
            return getattr(self.p, name)

        def execute(self):
            raise redis.ConnectionError("down")

    monkeypatch.setattr(c.r, "pipeline", Broken)
    with pytest.raises(redis.ConnectionError):
        c.process(batch)
    monkeypatch.setattr(c.r, "pipeline", real)
    c.step()
    [result] = _results(r)
    assert result.id == job.id and result.scores == [0.3]


def test_delivery_keeps_the_message_id_for_acknowledgement():
    job = q.Job("j", "r", "fc", 0, 1, "f")
    assert Delivery(b"1-0", job).attempts == 1


def test_a_dead_workers_job_is_found_behind_many_live_ones(r):
    """The claim scan is not limited to the first entries of the pending list."""
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
    assert [d.job.id for d in other._retries] == [job.id]


def test_a_batch_decodes_no_more_pixels_at_once_than_the_worker_budget(r):
    # a worker decoded every job of a batch together: memory was bounded per batch, not per process
    from reward_server.limits import BlockingPixelBudget

    c = RewardConsumer(r, _reward(max_batch=4), SETTINGS, "w1", threading.Event(),
                       budget=BlockingPixelBudget(2 * 2 * 3))  # two 2x3 images at a time
    c.ensure_group()
    calls = []
    original = c.reward.score
    c.reward.score = lambda samples: calls.append(len(samples)) or original(samples)
    _enqueue(r, ["a", "bb", "ccc", "dddd"], chunk=1)  # four one-image jobs: one batch of 4
    c.step()
    assert calls == [2, 2] and c.budget.in_use == 0
    assert sorted(tuple(res.scores) for res in _results(r)) == [(0.1,), (0.2,), (0.3,), (0.4,)]
