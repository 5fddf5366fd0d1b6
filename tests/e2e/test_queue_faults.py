"""Fault tolerance of the queue with a real redis-server and real worker processes.

Each test starts ``python -m shared.cli worker`` subprocesses and breaks something on purpose:
a worker killed mid-batch, a poison job, a Redis restart, no worker at all, a SIGTERM.
"""

from __future__ import annotations

import signal
import time
from concurrent.futures import TimeoutError as FutureTimeout

import pytest

from reward_server.service import RewardUnavailable
from shared.protocol import unpack
from shared.queue import messages as q
from tests import queue_helpers
from tests.queue_helpers import Front, fixed_cost_score, score_request, stored_results, wait_for, write_config

redis_server = queue_helpers.redis_server  # fixtures
start_worker = queue_helpers.start_worker

pytestmark = pytest.mark.slow

PROMPTS = ["a", "bb", "ccc", "dddd", "eeeee", "ffffff", "ggggggg", "hhhhhhhh"]


def _config(tmp_path, seconds=1.0, **options):
    spec = {"type": "fixed_cost", "max_batch_size": 4, "max_wait_ms": 0,
            "options": {"seconds_per_batch": seconds, **options}}
    return write_config(tmp_path / "rewards.yaml", {"fc": spec, "bright": {"type": "brightness"}})


def _holder(workers, client, reward="fc"):
    return next((w for w in workers if w.held_jobs(client, reward) > 0), None)


def test_sigkill_mid_batch_jobs_are_claimed_and_scored_exactly_once(tmp_path, redis_server, start_worker):
    cfg = _config(tmp_path, seconds=1.0)
    client = redis_server.client()
    workers = [start_worker(cfg, redis_server.url, "fc") for _ in range(2)]
    wait_for(lambda: all(w.registered(client, "fc") for w in workers), 30, "both workers to register")
    front = Front(cfg, redis_server.url, timeout_s=30)
    try:
        future = front.submit(score_request(PROMPTS, {"fc": 1.0}))
        victim = wait_for(lambda: _holder(workers, client), 10, "a worker to hold a batch")
        victim.stop(signal.SIGKILL)
        response = future.result(30)
    finally:
        front.close()
    assert response.scores["fc"] == [fixed_cost_score(p) for p in PROMPTS]
    assert response.errors == []
    results = stored_results(client)
    assert len(results) == 2  # two jobs of 4 samples: one stored result each, no duplicates
    survivor = next(w for w in workers if w is not victim)
    assert all(f":{survivor.pid}:" in r.worker for r in results)
    assert any(r.attempts == 2 for r in results), "the killed worker's job must have been claimed"
    assert client.xlen(q.jobs_stream("fc")) == 0  # everything acknowledged and removed


def test_poison_job_is_dead_lettered_after_bounded_attempts(tmp_path, redis_server, start_worker):
    cfg = _config(tmp_path, seconds=0.0, crash_on="POISON")
    client = redis_server.client()
    workers = [start_worker(cfg, redis_server.url, "fc") for _ in range(3)]
    wait_for(lambda: all(w.registered(client, "fc") for w in workers), 30, "three workers to register")
    front = Front(cfg, redis_server.url, timeout_s=40)
    prompts = ["xxxxxx", "POISON", "yyy", "zzzz", "wwwww", "vv"]  # jobs of 4 samples: [0:4] and [4:6]
    try:
        response = front.submit(score_request(prompts, {"fc": 1.0})).result(40)
        crashed = [w for w in workers if w.proc.poll() is not None]
        alive = [w for w in workers if w.proc.poll() is None]
        # max_attempts=2: two deliveries crashed two workers, the third delivery was given up.
        assert len(crashed) == 2 and all(w.proc.returncode == 17 for w in crashed)
        assert len(alive) == 1
        after = front.submit(score_request(["again"], {"fc": 1.0})).result(20)  # the survivor still serves
    finally:
        front.close()
    assert response.scores["fc"][:4] == [None] * 4  # the poison job (samples 0-3) failed...
    assert response.scores["fc"][4:] == [fixed_cost_score(p) for p in prompts[4:]]  # ...the other job did not
    assert {e.sample for e in response.errors} == {0, 1, 2, 3}
    assert all("max_attempts=2" in e.message and "poison" in e.message for e in response.errors)
    dead = client.xrange(q.dead_stream("fc"))
    assert len(dead) == 1
    entry = unpack(dead[0][1][q.FIELD.encode()])
    assert entry["attempts"] == 3 and entry["job"]["lo"] == 0
    assert after.scores["fc"] == [fixed_cost_score("again")]


@pytest.mark.parametrize("persistent", [False, True], ids=["no-persistence", "aof"])
def test_redis_restart_mid_run_gives_result_or_clear_error_then_recovers(
    tmp_path, redis_server, start_worker, persistent
):
    if persistent:  # restart the fixture's server with an append-only file
        redis_server.stop()
        redis_server.persistent = True
        redis_server.start()
    cfg = _config(tmp_path, seconds=1.0)
    client = redis_server.client()
    worker = start_worker(cfg, redis_server.url, "fc")
    wait_for(lambda: worker.registered(client, "fc"), 30, "the worker to register")
    front = Front(cfg, redis_server.url, timeout_s=20)
    try:
        future = front.submit(score_request(PROMPTS, {"fc": 1.0}))
        wait_for(lambda: worker.held_jobs(client, "fc") > 0, 10, "the worker to hold a batch")
        # SIGTERM is a clean shutdown (the AOF is synced); SIGKILL loses everything in memory.
        redis_server.stop(signal.SIGTERM if persistent else signal.SIGKILL)
        redis_server.start()
        started = time.monotonic()
        try:
            response = future.result(25)
            assert response.scores["fc"] == [fixed_cost_score(p) for p in PROMPTS]
            outcome = "result"
        except RewardUnavailable as exc:
            assert "Redis" in str(exc)
            assert not persistent, f"with an AOF the request must survive the restart, got: {exc}"
            outcome = "error"
        assert time.monotonic() - started < 15  # bounded: outage_grace_s=3 plus checks, never the full timeout
        # Workers and the front reconnect: a new request is scored.
        client = redis_server.client()
        wait_for(lambda: worker.registered(client, "fc"), 15, "the worker to re-register after the restart")
        again = front.submit(score_request(["after"], {"fc": 1.0})).result(20)
        assert again.scores["fc"] == [fixed_cost_score("after")]
    finally:
        front.close()
    assert worker.proc.poll() is None, worker.output()
    assert outcome in {"result", "error"}


def test_no_worker_for_a_reward_is_503_quickly_and_names_it(tmp_path, redis_server, start_worker):
    cfg = _config(tmp_path, seconds=1.0)
    client = redis_server.client()
    worker = start_worker(cfg, redis_server.url, "fc")  # nobody hosts "bright"
    wait_for(lambda: worker.registered(client, "fc"), 30, "the worker to register")
    front = Front(cfg, redis_server.url, timeout_s=30)
    try:
        assert front.backend.ready() == {"fc": True, "bright": False}
        started = time.monotonic()
        with pytest.raises(RewardUnavailable, match="bright"):
            front.submit(score_request(["a"], {"fc": 1.0, "bright": 1.0})).result(5)
        assert time.monotonic() - started < 1.0
        # The only worker dies while a request waits: the caller hears so within ~worker_ttl_s.
        future = front.submit(score_request(PROMPTS, {"fc": 1.0}))
        wait_for(lambda: worker.held_jobs(client, "fc") > 0, 10, "the worker to hold a batch")
        worker.stop(signal.SIGKILL)
        killed = time.monotonic()
        with pytest.raises(RewardUnavailable, match="no live worker for rewards \\['fc'\\]"):
            future.result(10)
        assert time.monotonic() - killed < 5
    except FutureTimeout:
        pytest.fail("the front hung instead of answering 503")
    finally:
        front.close()


def test_sigterm_finishes_the_batch_in_hand_then_exits(tmp_path, redis_server, start_worker):
    cfg = _config(tmp_path, seconds=1.5)
    client = redis_server.client()
    worker = start_worker(cfg, redis_server.url, "fc")
    wait_for(lambda: worker.registered(client, "fc"), 30, "the worker to register")
    front = Front(cfg, redis_server.url, timeout_s=30)
    try:
        future = front.submit(score_request(PROMPTS[:4], {"fc": 1.0}))
        wait_for(lambda: worker.held_jobs(client, "fc") > 0, 10, "the worker to hold a batch")
        worker.proc.send_signal(signal.SIGTERM)
        response = future.result(10)  # well before any claim could happen: nobody else is running
        assert worker.proc.wait(10) == 0
    finally:
        front.close()
    assert response.scores["fc"] == [fixed_cost_score(p) for p in PROMPTS[:4]]
    [result] = stored_results(client)
    assert f":{worker.pid}:" in result.worker and result.attempts == 1
    assert not worker.registered(client, "fc")  # deregistered on the way out
    assert "finishing the batch in hand" in worker.output()
