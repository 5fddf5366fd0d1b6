"""Queue worker process: hosts rewards and consumes their Redis streams.

One ``RewardConsumer`` thread per hosted reward (see ``consumer.py``) reads
``{p}:jobs:{reward}`` through the consumer group, batches, scores, writes and acknowledges. A
heartbeat thread announces the worker (``/readyz`` of the fronts shows it) and renews the lease
on the jobs it holds, so only the jobs of a dead or frozen worker become idle and get claimed by
another one after ``visibility_timeout_s``. ``request_stop`` (SIGTERM) lets every consumer finish
the batch in hand, then the worker deregisters and returns.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from reward_server.limits import BlockingPixelBudget
from reward_server.queue.consumer import REDIS_ERRORS, Backoff, Delivery, RewardConsumer
from reward_server.rewards.base import Reward
from shared.images import ImageLimits
from shared.queue import messages as q

__all__ = ["Delivery", "RewardConsumer", "Worker", "connect_sync", "make_worker_id"]

log = logging.getLogger(__name__)


def connect_sync(url: str) -> redis.Redis:
    """A Redis client for ``redis://`` or ``rediss://`` (TLS) URLs with bounded socket waits."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=5, socket_timeout=30, health_check_interval=10, socket_keepalive=True,
        retry=Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.05), 2),
    )  # fmt: skip


def make_worker_id() -> str:
    """``host:pid:random`` -- the pid lets operators (and tests) find a worker's consumer."""
    return f"{socket.gethostname()}:{os.getpid()}:{q.new_id()[:6]}"


class Worker:
    """A process hosting some rewards: one consumer thread each, plus heartbeats."""

    def __init__(
        self,
        client: redis.Redis,
        rewards: Mapping[str, Reward],
        settings: q.QueueSettings,
        limits: ImageLimits | None = None,
        worker_id: str | None = None,
        max_pixels_in_flight: int | None = None,
    ):
        self.r = client
        self.settings = settings
        self.worker_id = worker_id or make_worker_id()
        self.stop = threading.Event()
        self._finished = threading.Event()
        limits = limits or ImageLimits()
        # one budget for the whole process: its consumers decode at most this many pixels at once
        budget = BlockingPixelBudget(max_pixels_in_flight or 2 * limits.max_request_pixels)
        self.consumers = [
            RewardConsumer(client, reward, settings, self.worker_id, self.stop, limits, budget)
            for reward in rewards.values()
        ]
        self.rewards = dict(rewards)

    def heartbeat(self) -> None:
        """Announce this worker for each reward, publish descriptions, renew the lease on held jobs."""
        now = time.time()
        pipe = self.r.pipeline(transaction=False)
        for c in self.consumers:
            key = q.workers_key(c.name)
            pipe.zadd(key, {self.worker_id: now})
            pipe.zremrangebyscore(key, "-inf", now - 10 * self.settings.worker_ttl_s)  # long-dead entries
            pipe.hset(q.REWARDS_KEY, c.name, q.pack_description(c.reward.describe()))
            held = c.held()
            if held:  # min-idle 0 + JUSTID: resets the idle time without counting a delivery
                pipe.xclaim(c.stream, q.GROUP, self.worker_id, 0, held, justid=True)
        pipe.execute()

    def _heartbeat_loop(self) -> None:
        backoff = Backoff()
        while True:
            try:
                self.heartbeat()
                backoff.reset()
                wait = self.settings.heartbeat_interval_s
            except (*REDIS_ERRORS, redis.ResponseError) as exc:
                wait = min(backoff.next(), self.settings.heartbeat_interval_s)
                log.warning("heartbeat failed (%s); retrying in %.1fs", exc, wait)
            if self._finished.wait(wait):  # beats on while a stopping worker finishes its batch
                return

    def run(self) -> None:
        """Serve until ``request_stop``; returns after every consumer finished its held jobs."""
        beat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        threads = [threading.Thread(target=c.run, name=f"consumer-{c.name}", daemon=True) for c in self.consumers]
        for t in [beat, *threads]:
            t.start()
        log.info("worker %s serving %s", self.worker_id, ", ".join(self.rewards))
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=0.2)
        self._finished.set()
        beat.join(timeout=5)
        self._deregister()
        log.info("worker %s stopped", self.worker_id)

    def request_stop(self) -> None:
        self.stop.set()

    def _deregister(self) -> None:
        try:
            pipe = self.r.pipeline(transaction=False)
            for c in self.consumers:
                pipe.zrem(q.workers_key(c.name), self.worker_id)
            pipe.execute()
        except REDIS_ERRORS as exc:
            log.warning("could not deregister (%s); the heartbeat entry will expire", exc)
