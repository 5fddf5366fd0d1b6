"""One reward's stream on a worker: read, batch, score, write results, acknowledge.

Batches fill up to ``max_batch_size`` samples or ``max_wait_ms``. Jobs of a dead worker are
claimed after ``visibility_timeout_s`` one at a time (XPENDING IDLE + XCLAIM: what XAUTOCLAIM
does, but exact about the oldest idle entry and its delivery count) and scored one per batch; a
job delivered more than ``max_attempts`` times is dead-lettered and answered as a failure.
Results that could not be written (Redis down) are kept and written once Redis is back.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import redis
from pydantic import ValidationError

from reward_server.batching import score_isolated
from reward_server.limits import RELEASE_AFTER_PIXELS, BlockingPixelBudget, release_memory
from reward_server.queue import metrics as m
from reward_server.rewards.base import Reward, ScoreResult
from shared.images import ImageLimits
from shared.protocol import (
    InvalidRequest,
    Sample,
    SampleIn,
    ScoreRequest,
    decode_samples,
    pack,
    request_pixels,
    unpack,
)
from shared.queue import messages as q

log = logging.getLogger(__name__)

READ_BLOCK_MS = 500  # longest a read blocks, so stop requests and claims are noticed quickly
POLL_S = 0.001  # how often a filling batch looks for more jobs
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError)


class Backoff:
    """Exponential backoff with jitter for reconnecting."""

    def __init__(self, first: float = 0.1, cap: float = 5.0):
        self.first, self.cap, self.attempt = first, cap, 0

    def next(self) -> float:
        delay = min(self.cap, self.first * 2**self.attempt)
        self.attempt += 1
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.attempt = 0


@dataclass
class Delivery:
    """A stream entry this worker holds."""

    msg_id: bytes
    job: q.Job
    attempts: int = 1


class RewardConsumer:
    """Consumes one reward's stream: read, batch, score, write, acknowledge."""

    def __init__(
        self,
        client: redis.Redis,
        reward: Reward,
        settings: q.QueueSettings,
        worker_id: str,
        stop: threading.Event,
        limits: ImageLimits | None = None,
        budget: BlockingPixelBudget | None = None,
    ):
        self.r = client
        self.reward = reward
        self.name = reward.name
        self.stream = q.jobs_stream(reward.name)
        self.settings = settings
        self.worker_id = worker_id
        self.stop = stop
        self.limits = limits or ImageLimits()
        self.budget = budget or BlockingPixelBudget(2 * self.limits.max_request_pixels)
        self.max_batch = reward.spec.max_batch_size
        self.max_wait = reward.spec.max_wait_ms / 1000.0
        self.inflight: set[bytes] = set()  # ids whose lease the heartbeat renews
        self._lock = threading.Lock()
        self._carry: deque[Delivery] = deque()  # read but did not fit in the last batch
        self._retries: deque[Delivery] = deque()  # claimed from dead workers: one per batch
        self._unwritten: list[tuple[Delivery, q.JobResult, str | None]] = []
        self._group_ready = False
        self._next_claim = 0.0

    # -- main loop -------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until ``stop`` is set, then finish what is held and return."""
        backoff = Backoff()
        while not self.stop.is_set():
            try:
                self.step()
                backoff.reset()
            except REDIS_ERRORS as exc:
                m.REDIS_ERRORS.labels("worker").inc()
                delay = backoff.next()
                log.warning("reward %s: Redis unreachable (%s); retrying in %.1fs", self.name, exc, delay)
                self._group_ready = False
                self.stop.wait(delay)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    log.exception("reward %s: Redis refused a command", self.name)
                    self.stop.wait(backoff.next())
                self._group_ready = False  # Redis lost the stream (restart without persistence)
            except Exception:
                log.exception("reward %s: unexpected error in the consumer loop", self.name)
                self.stop.wait(backoff.next())
        self._drain()

    def step(self) -> None:
        """One iteration: flush unwritten results, then read or claim a batch and score it."""
        if not self._group_ready:
            self.ensure_group()
        if self._unwritten:
            self._write(self._unwritten)
            self._unwritten = []
        batch = self.next_batch()
        if batch:
            self.process(batch)

    def _drain(self) -> None:
        """On shutdown: score what this worker already holds, so nothing waits for a claim."""
        held = list(self._carry) + list(self._retries)
        self._carry.clear()
        self._retries.clear()
        try:
            if self._unwritten:
                self._write(self._unwritten)
            if held:
                log.info("reward %s: finishing %d held jobs before exiting", self.name, len(held))
                self.process(held)
        except REDIS_ERRORS as exc:
            log.warning("reward %s: could not return held jobs (%s); they will be claimed", self.name, exc)

    def ensure_group(self) -> None:
        try:
            self.r.xgroup_create(self.stream, q.GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    # -- reading ---------------------------------------------------------------------------
    def _read(self, count: int, block_ms: int | None) -> list[Delivery]:
        kwargs = {"count": max(1, count)}
        if block_ms is not None:
            kwargs["block"] = max(1, block_ms)
        resp = self.r.xreadgroup(q.GROUP, self.worker_id, {self.stream: ">"}, **kwargs)
        out = []
        for _stream, entries in resp or []:
            for msg_id, fields in entries:
                delivery = self._parse(msg_id, fields, attempts=1)
                if delivery is not None:
                    out.append(delivery)
        return out

    def _parse(self, msg_id: bytes, fields: dict | None, attempts: int) -> Delivery | None:
        with self._lock:
            self.inflight.add(msg_id)
        raw = (fields or {}).get(q.FIELD.encode())
        try:
            if raw is None:
                raise q.MessageError("stream entry has no job field")
            return Delivery(msg_id, q.Job.decode(raw), attempts)
        except q.MessageError as exc:
            log.error("reward %s: dropping malformed entry %s: %s", self.name, msg_id, exc)
            self.r.xadd(q.dead_stream(self.name), {q.FIELD: pack({"entry": msg_id, "reason": str(exc)})},
                        maxlen=self.settings.max_stream_length, approximate=True)
            self._ack([msg_id])
            return None

    def claim(self) -> None:
        """Take over a job idle longer than the visibility timeout (its worker is gone)."""
        now = time.monotonic()
        if self._retries or now < self._next_claim:
            return
        self._next_claim = now + max(0.2, self.settings.visibility_timeout_s / 4)
        vis_ms = int(self.settings.visibility_timeout_s * 1000)
        # One job at a time: a job claimed but not yet tried must not be charged a delivery when
        # the poison job claimed with it crashes this worker too. XPENDING IDLE finds the oldest
        # idle entry anywhere in the pending list; XCLAIM's min-idle check loses any race cleanly.
        idle = self.r.xpending_range(self.stream, q.GROUP, min="-", max="+", count=1, idle=vis_ms)
        if not idle:
            return
        msg_id = idle[0]["message_id"]
        claimed = self.r.xclaim(self.stream, q.GROUP, self.worker_id, vis_ms, [msg_id])
        if not claimed:  # another worker was faster, or the entry is gone
            return
        fields = claimed[0][1]
        if fields is None:  # deleted entry still pending (Redis 6)
            self._ack([msg_id])
            return
        attempts = int(idle[0]["times_delivered"]) + 1
        delivery = self._parse(msg_id, fields, attempts)
        if delivery is not None:
            log.warning("reward %s: claimed job %s from %s (delivery %d)", self.name, delivery.job.id,
                        idle[0]["consumer"].decode(errors="replace"), attempts)
            m.RETRIES.labels(self.name).inc()
            self._retries.append(delivery)
            self._next_claim = 0.0  # there may be more: look again right after this one

    def next_batch(self) -> list[Delivery]:
        """Claimed jobs one at a time; otherwise fill a batch up to max size or max wait."""
        self.claim()
        if self._retries:
            return [self._retries.popleft()]
        incoming = list(self._carry)
        self._carry.clear()
        if not incoming:
            incoming = self._read(1, READ_BLOCK_MS)
            if not incoming:
                return []
        batch: list[Delivery] = []
        self._fill(batch, incoming)
        deadline = time.monotonic() + self.max_wait
        # Read only as many jobs as should fit (judged by the last one's size): jobs read but not
        # scored would wait here while other workers idle. Redis resolves short BLOCK timeouts
        # only every 1/hz (100 ms), so the wait for more is a poll without blocking.
        while not self._carry and (room := self.max_batch - self._size(batch)) >= batch[-1].job.size:
            got = self._read(room // max(1, batch[-1].job.size), None)
            self._fill(batch, got)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if not got:
                time.sleep(min(POLL_S, remaining))
        return batch

    @staticmethod
    def _size(batch: list[Delivery]) -> int:
        return sum(d.job.size for d in batch)

    def _fill(self, batch: list[Delivery], incoming: list[Delivery]) -> None:
        """Move deliveries into ``batch`` while they fit (a lone oversized job still goes); keep the rest."""
        for d in incoming:
            if not self._carry and (not batch or self._size(batch) + d.job.size <= self.max_batch):
                batch.append(d)
            else:
                self._carry.append(d)

    # -- scoring ---------------------------------------------------------------------------
    def process(self, batch: list[Delivery]) -> None:
        """Score a batch and write one result per job (failures included)."""
        now = time.time()
        out: list[tuple[Delivery, q.JobResult, str | None]] = []
        todo: list[Delivery] = []
        for d in batch:
            if d.attempts > self.settings.max_attempts:
                reason = (f"job {d.job.id} was delivered {d.attempts} times and crashed or stalled its worker "
                          f"each time (max_attempts={self.settings.max_attempts}); giving up: the input may "
                          "be poisonous for this reward")
                out.append((d, q.JobResult.failure(d.job, reason, self.worker_id, d.attempts), reason))
            elif d.job.deadline and now > d.job.deadline:
                reason = "expired: the caller's deadline passed before a worker could take the job"
                out.append((d, q.JobResult.failure(d.job, reason, self.worker_id, d.attempts), None))
            else:
                todo.append(d)
        try:
            if todo:
                out.extend(self._score(todo))
        except REDIS_ERRORS:
            self._carry.extendleft(reversed(todo))  # scored again once Redis is back
            self._unwritten.extend(out)
            raise
        except Exception as exc:  # a bug, not a model error (score_isolated catches those)
            log.exception("reward %s: internal error on a batch", self.name)
            why = f"internal worker error: {exc!r}"
            out.extend((d, q.JobResult.failure(d.job, why, self.worker_id, d.attempts), None) for d in todo)
        self._write(out)

    def _score(self, todo: list[Delivery]) -> list[tuple[Delivery, q.JobResult, str | None]]:
        pipe = self.r.pipeline(transaction=False)
        for d in todo:
            pipe.lrange(q.blob_key(d.job.request), d.job.lo, d.job.hi - 1)
        blobs = pipe.execute()
        parsed = [self._wire_samples(d.job, raw) for d, raw in zip(todo, blobs, strict=True)]
        out = []
        # Decode and score as many jobs at once as the worker's pixel budget allows (a job alone always fits).
        for group in self._pixel_groups(list(zip(todo, parsed, strict=True))):
            pixels = sum(p for _, (_, p) in group)
            with self.budget.hold(pixels):
                out.extend(self._score_group([(d, items) for d, (items, _) in group]))
            if pixels >= RELEASE_AFTER_PIXELS:
                release_memory()
        return out

    def _pixel_groups(self, jobs: list[tuple[Delivery, tuple[Any, int]]]) -> list[list[tuple[Delivery, Any]]]:
        """Consecutive jobs whose decoded pixels fit the budget together."""
        groups: list[list[tuple[Delivery, Any]]] = []
        total = 0
        for job in jobs:
            pixels = job[1][1]
            if not groups or total + pixels > self.budget.capacity:
                groups.append([])
                total = 0
            groups[-1].append(job)
            total += pixels
        return groups

    def _score_group(self, group: list[tuple[Delivery, list[SampleIn] | list[ScoreResult]]]
                     ) -> list[tuple[Delivery, q.JobResult, str | None]]:
        per_job = [self._decode(items) for _, items in group]
        groups = [[s for s in items if isinstance(s, Sample)] for items in per_job]
        started = time.monotonic()
        scored = score_isolated(self.reward.score, groups) if any(groups) else [[] for _ in groups]
        n = sum(len(g) for g in groups)
        if n:
            m.BATCH_SIZE.labels(self.name).observe(n)
            m.BATCH_SECONDS.labels(self.name).observe(time.monotonic() - started)
        out = []
        for (d, _), items, results in zip(group, per_job, scored, strict=True):
            it = iter(results)
            merged = [next(it) if isinstance(s, Sample) else s for s in items]
            out.append((d, self._result(d, merged), None))
        return out

    def _wire_samples(self, job: q.Job, raw: list[bytes]) -> tuple[list[SampleIn] | list[ScoreResult], int]:
        """The job's wire samples and the pixels they decode to, or a failed result per sample."""
        if len(raw) != job.size:
            why = "the request's images are gone from Redis (expired after blob_ttl_s, or Redis lost its data)"
            return [ScoreResult.failed(why)] * job.size, 0
        try:
            samples = [SampleIn.model_validate(unpack(x)) for x in raw]
        except (InvalidRequest, ValidationError, ValueError) as exc:
            return [ScoreResult.failed(f"invalid sample: {exc}")] * job.size, 0
        request = ScoreRequest(rewards={self.name: 1.0}, samples=samples)
        return samples, min(request_pixels(request, self.limits), self.budget.capacity)

    def _decode(self, items: list[SampleIn] | list[ScoreResult]) -> list[ScoreResult | Sample]:
        """Decoded samples, or a failed result in place of each sample that cannot be scored."""
        if not items or isinstance(items[0], ScoreResult):
            return list(items)
        try:
            samples = decode_samples(ScoreRequest(rewards={self.name: 1.0}, samples=items), self.limits)
        except (InvalidRequest, ValidationError, ValueError) as exc:
            return [ScoreResult.failed(f"invalid sample: {exc}")] * len(items)
        out: list[ScoreResult | Sample] = []
        for s in samples:
            why = self.reward.check_sample(s)
            out.append(ScoreResult.failed(why) if why else s)
        return out

    def _result(self, d: Delivery, results: list[ScoreResult]) -> q.JobResult:
        scores = [r.score if r.score is None else float(r.score) for r in results]
        return q.JobResult(
            id=d.job.id, request=d.job.request, reward=self.name, scores=scores,
            errors=[r.error if r.score is None else None for r in results],
            details=[r.details for r in results], version=self.reward.version,
            worker=self.worker_id, attempts=d.attempts, enqueued=d.job.enqueued,
        )  # fmt: skip

    # -- writing ---------------------------------------------------------------------------
    def _write(self, items: list[tuple[Delivery, q.JobResult, str | None]]) -> None:
        """Store results (first writer wins), announce them, acknowledge; kept for retry on Redis loss."""
        if not items:
            return
        for d, result, dead_reason in items:
            if dead_reason:
                log.error("reward %s: job %s (request %s) dead-lettered: %s", self.name, d.job.id, d.job.request,
                          dead_reason)
            log.debug("reward %s: job %s (request %s, samples %d-%d) done, %d failed, attempt %d", self.name,
                      d.job.id, d.job.request, d.job.lo, d.job.hi, sum(e is not None for e in result.errors),
                      d.attempts)
        s = self.settings
        pipe = self.r.pipeline(transaction=False)
        for d, result, dead_reason in items:
            data = result.encode()
            reply = q.reply_stream(d.job.reply)
            pipe.set(q.result_key(d.job.id), data, nx=True, px=int(s.result_ttl_s * 1000))
            pipe.xadd(reply, {q.FIELD: data}, maxlen=s.max_stream_length, approximate=True)
            pipe.expire(reply, int(s.result_ttl_s))
            if dead_reason:
                entry = pack({"job": asdict(d.job), "reason": dead_reason, "worker": self.worker_id,
                              "attempts": d.attempts, "time": time.time()})
                pipe.xadd(q.dead_stream(self.name), {q.FIELD: entry}, maxlen=s.max_stream_length, approximate=True)
        ids = [d.msg_id for d, _, _ in items]
        pipe.xack(self.stream, q.GROUP, *ids)  # same round trip: results and acks succeed or are retried together
        pipe.xdel(self.stream, *ids)
        try:
            pipe.execute()
        except REDIS_ERRORS:
            if items is not self._unwritten:
                self._unwritten.extend(items)  # SET NX and the front's dedup make a rewrite harmless
            raise
        with self._lock:
            self.inflight.difference_update(ids)
        now = time.time()
        for d, result, dead_reason in items:
            outcome = "dead_letter" if dead_reason else ("ok" if all(e is None for e in result.errors) else "failed")
            m.JOBS.labels(self.name, outcome).inc()
            if dead_reason:
                m.DEAD_LETTERS.labels(self.name).inc()
            if d.job.enqueued:
                m.JOB_LATENCY.labels(self.name).observe(max(0.0, now - d.job.enqueued))

    def _ack(self, ids: list[bytes]) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.xack(self.stream, q.GROUP, *ids)
        pipe.xdel(self.stream, *ids)
        pipe.execute()
        with self._lock:
            self.inflight.difference_update(ids)

    def held(self) -> list[bytes]:
        with self._lock:
            return list(self.inflight)
