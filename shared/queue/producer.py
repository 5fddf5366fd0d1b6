"""Producer side of the Redis queue: store a request once, enqueue jobs, wait for their results.

Used by the front (``reward_server.queue.backend``) and by the client's queue transport
(``shared.queue.transport``), so both give the same answers. One reader task per producer follows
its reply stream and resolves waiting futures by job id, which also drops duplicate results of a
job that two workers finished. A waiter never outlives its deadline: it fails early with a clear
error when no worker is alive for a reward, when Redis is unreachable for ``outage_grace_s``,
or when Redis lost the request (restart without persistence).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from shared.queue import messages as q

log = logging.getLogger(__name__)

REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError)
CHECK_EVERY_S = 0.5  # how often a waiter re-checks liveness, lost data and missed results
REFRESH_EVERY_S = 0.5  # how often the worker registry is re-read
REPLY_BLOCK_MS = 500  # longest the result reader blocks (bounds close())


class QueueError(RuntimeError):
    """Redis is unreachable or lost the request; the message says which and what to do."""


class NoLiveWorker(QueueError):
    """No worker has a recent heartbeat for these rewards."""

    def __init__(self, rewards: Sequence[str], detail: str = ""):
        self.rewards = sorted(rewards)
        super().__init__(
            f"no live worker for rewards {self.rewards}{detail}: start `psr worker --rewards "
            f"{','.join(self.rewards)}` against this Redis"
        )


class UnknownReward(QueueError):
    """No worker ever registered these rewards on this Redis (a misspelt name, or none started yet)."""

    def __init__(self, rewards: Sequence[str], registered: Sequence[str]):
        self.rewards = sorted(rewards)
        known = ", ".join(sorted(registered)) or "none yet"
        super().__init__(
            f"no worker has registered rewards {self.rewards} on this Redis (registered: {known}); check the "
            f"name, or start `psr worker --rewards {','.join(self.rewards)}` against this Redis"
        )


class QueueTimeout(TimeoutError):
    """The results did not arrive before the caller's deadline."""


def connect(url: str, max_connections: int = 64) -> aioredis.Redis:
    """An asyncio Redis client for ``redis://`` or ``rediss://`` (TLS) URLs with bounded socket waits.

    A burst of requests waits for one of ``max_connections`` connections instead of failing.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=20, socket_connect_timeout=3, socket_timeout=10,
        health_check_interval=10, socket_keepalive=True, retry=Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.05), 2),
    )  # fmt: skip
    return aioredis.Redis.from_pool(pool)


@dataclass
class Submission:
    """What one request became on the queue."""

    request: str
    jobs: dict[str, list[q.Job]]  # reward -> jobs in sample order
    n: int
    started: float = field(default_factory=time.monotonic)

    def all_jobs(self) -> list[q.Job]:
        return [j for jobs in self.jobs.values() for j in jobs]


@dataclass
class RewardState:
    """What the registry says about one reward."""

    last_heartbeat: float = 0.0
    live_workers: int = 0
    depth: int = 0
    description: dict = field(default_factory=dict)


class QueueProducer:
    """Enqueues requests and collects their results; start() before use, close() at the end."""

    def __init__(self, client: aioredis.Redis, settings: q.QueueSettings, rewards: Sequence[str] = ()):
        self.r = client
        self.settings = settings
        self.front_id = q.new_id()
        self.reply = q.reply_stream(self.front_id)
        self.known_rewards = set(rewards)
        self.state: dict[str, RewardState] = {}
        self.outage_since: float | None = None
        self.last_error = ""
        self._waiting: dict[str, asyncio.Future[q.JobResult]] = {}
        self._tasks: list[asyncio.Task] = []
        self._closing = False

    async def start(self) -> None:
        try:
            await self.refresh()
        except REDIS_ERRORS as exc:  # not fatal: the loops reconnect; but callers must hear why nothing works
            self._note_outage(exc)
        self._tasks = [asyncio.create_task(self._follow_replies(), name="psr-replies"),
                       asyncio.create_task(self._refresh_loop(), name="psr-registry")]

    async def close(self) -> None:
        """Stop the background loops (they finish their current call; cancelling redis-py
        mid-command can leave its pool waiting forever) and drop the reply stream."""
        self._closing = True
        for fut in self._waiting.values():
            fut.cancel()
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=3.0)
            for task in pending:
                task.cancel()
        with contextlib.suppress(*REDIS_ERRORS, asyncio.TimeoutError):
            await asyncio.wait_for(self.r.delete(self.reply), 1.0)
        with contextlib.suppress(*REDIS_ERRORS, asyncio.TimeoutError):
            await asyncio.wait_for(self.r.aclose(), 1.0)

    # -- registry ---------------------------------------------------------------------------
    def alive(self, reward: str) -> bool:
        """A worker for ``reward`` sent a heartbeat within ``worker_ttl_s``."""
        state = self.state.get(reward)
        return state is not None and time.time() - state.last_heartbeat < self.settings.worker_ttl_s

    def where(self) -> str:
        """``host:port/db`` of the Redis this producer talks to (never the password)."""
        kw = self.r.connection_pool.connection_kwargs
        if kw.get("path"):
            return f"unix://{kw['path']}"
        return f"{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"

    def unavailable(self, rewards: Sequence[str]) -> QueueError | None:
        """Why ``rewards`` cannot be scored now -- Redis unreachable, a reward no worker ever
        registered, no live worker -- or None when they can."""
        if self.outage_since is not None:
            return QueueError(f"Redis at {self.where()} is unreachable: {self.last_error}; check that "
                              "redis-server runs there and the URL (host, port, password) is right")
        unknown = [n for n in rewards if n not in self.state and n not in self.known_rewards]
        if unknown:
            return UnknownReward(unknown, [n for n, st in self.state.items() if st.description])
        down = [n for n in rewards if not self.alive(n)]
        return NoLiveWorker(down) if down else None

    async def refresh(self) -> None:
        """Re-read heartbeats, queue depths and the descriptions workers publish."""
        descriptions = await self.r.hgetall(q.REWARDS_KEY)
        names = sorted(self.known_rewards | {k.decode() for k in descriptions})
        now = time.time()
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            pipe.zrevrange(q.workers_key(name), 0, 0, withscores=True)
            pipe.zcount(q.workers_key(name), now - self.settings.worker_ttl_s, "+inf")
            pipe.xlen(q.jobs_stream(name))
        values = await pipe.execute()
        state = {}
        for i, name in enumerate(names):
            top, live, depth = values[3 * i : 3 * i + 3]
            desc = descriptions.get(name.encode())
            state[name] = RewardState(
                last_heartbeat=top[0][1] if top else 0.0, live_workers=int(live), depth=int(depth),
                description=q.unpack_description(desc) if desc else {},
            )  # fmt: skip
        self.state = state

    async def _refresh_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(REFRESH_EVERY_S)
            try:
                await self.refresh()
            except REDIS_ERRORS as exc:
                self._note_outage(exc)
            except Exception:
                log.exception("refreshing the worker registry failed")

    def _note_outage(self, exc: Exception) -> None:
        if self.outage_since is None:
            log.warning("Redis unreachable: %s", exc)
            self.outage_since = time.monotonic()
        self.last_error = str(exc)

    # -- results ----------------------------------------------------------------------------
    async def _follow_replies(self) -> None:
        last = b"0-0"
        delay = 0.05
        while not self._closing:
            try:
                resp = await self.r.xread({self.reply: last}, count=512, block=REPLY_BLOCK_MS)
                self.outage_since, delay = None, 0.05
                for _stream, entries in resp or []:
                    for msg_id, fields in entries:
                        last = msg_id
                        self._resolve(fields.get(q.FIELD.encode()))
                    await self.r.xtrim(self.reply, minid=last)  # read entries are not needed again
            except REDIS_ERRORS as exc:
                self._note_outage(exc)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 2.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reading results failed")
                await asyncio.sleep(0.5)

    def _resolve(self, raw: bytes | None) -> None:
        if raw is None:
            return
        try:
            result = q.JobResult.decode(raw)
        except q.MessageError as exc:
            log.error("dropping a malformed result: %s", exc)
            return
        fut = self._waiting.get(result.id)
        if fut is not None and not fut.done():  # a second result for the same job is ignored
            fut.set_result(result)

    # -- submitting and waiting -------------------------------------------------------------
    async def submit(self, samples: Sequence[bytes], chunks: Mapping[str, int], timeout_s: float) -> Submission:
        """Store the packed samples once and enqueue one job per reward and chunk of samples."""
        if self.outage_since is not None and time.monotonic() - self.outage_since > 1.0:
            raise QueueError(f"Redis is unreachable: {self.last_error}")
        request = q.new_id()
        deadline = time.time() + timeout_s
        jobs: dict[str, list[q.Job]] = {}
        for reward, size in chunks.items():
            jobs[reward] = [
                q.Job(q.new_id(), request, reward, lo, min(lo + size, len(samples)), self.front_id, deadline=deadline)
                for lo in range(0, len(samples), size)
            ]
        sub = Submission(request, jobs, len(samples))
        loop = asyncio.get_running_loop()
        for job in sub.all_jobs():  # registered first: a fast worker must not beat us
            self._waiting[job.id] = loop.create_future()
        pipe = self.r.pipeline(transaction=True)
        blob = q.blob_key(request)
        if samples:
            pipe.rpush(blob, *samples)
            pipe.pexpire(blob, int(self.settings.blob_ttl_s * 1000))
        for job in sub.all_jobs():
            pipe.xadd(q.jobs_stream(job.reward), {q.FIELD: job.encode()})
        try:
            await pipe.execute()
        except REDIS_ERRORS as exc:
            self._forget(sub)
            self._note_outage(exc)
            raise QueueError(f"Redis is unreachable, the request was not queued: {exc}") from exc
        except BaseException:  # cancelled (the caller's timeout) or any other error: nobody will wait
            self._forget(sub)
            raise
        return sub

    def _forget(self, sub: Submission) -> None:
        for job in sub.all_jobs():
            fut = self._waiting.pop(job.id, None)
            if fut is not None and not fut.done():
                fut.cancel()

    async def wait(self, sub: Submission, timeout_s: float) -> dict[str, list[q.JobResult]]:
        """Results of every job, grouped by reward in sample order; raises instead of hanging."""
        deadline = time.monotonic() + timeout_s
        futures = {job.id: self._waiting[job.id] for job in sub.all_jobs()}
        try:
            while True:
                pending = [f for f in futures.values() if not f.done()]
                if not pending:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    missing = sorted({j.reward for j in sub.all_jobs() if not futures[j.id].done()})
                    raise QueueTimeout(f"no result within {timeout_s:.1f}s for rewards {missing}")
                await asyncio.wait(pending, timeout=min(CHECK_EVERY_S, remaining))
                if any(not f.done() for f in futures.values()):
                    await self._check(sub, futures)
        finally:
            self._forget(sub)
        return {reward: [futures[j.id].result() for j in jobs] for reward, jobs in sub.jobs.items()}

    async def _check(self, sub: Submission, futures: Mapping[str, asyncio.Future]) -> None:
        """Fail fast on a long Redis outage, lost data or no live worker; pick up missed results."""
        if self.outage_since is not None:
            down_for = time.monotonic() - self.outage_since
            if down_for > self.settings.outage_grace_s:
                raise QueueError(f"Redis unreachable for {down_for:.0f}s: {self.last_error}")
            return
        open_jobs = [j for j in sub.all_jobs() if not futures[j.id].done()]
        try:
            pipe = self.r.pipeline(transaction=False)
            pipe.exists(q.blob_key(sub.request))
            pipe.mget([q.result_key(j.id) for j in open_jobs])
            exists, stored = await pipe.execute()
        except REDIS_ERRORS as exc:
            self._note_outage(exc)
            return
        for raw in stored:
            if raw is not None:
                self._resolve(raw)
        if sub.n and not exists and any(not futures[j.id].done() for j in open_jobs):
            raise QueueError("Redis lost the request while it was queued (restarted without persistence?); "
                             "send it again")
        dead = sorted({j.reward for j in open_jobs if not futures[j.id].done() and not self.alive(j.reward)})
        if dead:
            raise NoLiveWorker(dead, " (their workers stopped while the request waited)")

    async def collect(self, sub: Submission) -> dict[str, q.JobResult | None]:
        """Job id -> stored result (None while pending), for callers that poll."""
        jobs = sub.all_jobs()
        raw = await self.r.mget([q.result_key(j.id) for j in jobs]) if jobs else []
        return {j.id: (q.JobResult.decode(x) if x is not None else None) for j, x in zip(jobs, raw, strict=True)}
