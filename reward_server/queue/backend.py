"""A ``Backend`` for ``ScoringService`` that scores on queue workers through Redis.

The front validates and decodes as usual; this backend stores the request's samples once (as
sent: raw or PNG/JPEG) and enqueues one job per reward and chunk of ``max_batch_size`` samples.
Errors reach the app as ``RewardUnavailable`` subclasses, so they become 503/504 with a message
that names the reward or the Redis problem; nothing waits past ``request_timeout_s``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from reward_server.rewards.base import Reward, ScoreResult
from reward_server.service import RewardUnavailable
from shared.protocol import Sample, ScoreRequest
from shared.queue import messages as q
from shared.queue.producer import NoLiveWorker, QueueError, QueueProducer, QueueTimeout, Submission, connect

log = logging.getLogger(__name__)


class QueueUnavailable(RewardUnavailable):
    """Redis is unreachable or lost the request (503)."""


class ScoreTimeout(TimeoutError):
    """The workers did not answer before the request timeout (504)."""


def to_score_results(results: list[q.JobResult]) -> list[ScoreResult]:
    """Concatenate job results (in sample order) into per-sample ``ScoreResult``s."""
    out = []
    for res in results:
        for score, error, details in zip(res.scores, res.errors, res.details, strict=True):
            out.append(ScoreResult(score, details, error) if score is not None
                       else ScoreResult.failed(error or "worker gave no score", details))
    return out


class RedisBackend:
    """Scores on remote workers; ``ready()`` reflects worker heartbeats per reward."""

    remote = True  # workers decode the stored request themselves: ``run`` needs no decoded samples

    def __init__(
        self,
        redis_url: str,
        rewards: Mapping[str, Reward],
        settings: q.QueueSettings,
        timeout_s: float = 600.0,
    ):
        self.url = redis_url
        self.rewards = dict(rewards)
        self.settings = settings
        self.timeout_s = timeout_s
        self.producer = QueueProducer(connect(redis_url), settings, rewards=list(self.rewards))
        self._started = False

    async def start(self) -> None:
        """Read the worker registry once and start following results (idempotent)."""
        if not self._started:
            self._started = True
            await self.producer.start()

    def ready(self) -> dict[str, bool]:
        return {name: self.producer.alive(name) for name in self.rewards}

    def unavailable(self, rewards: list[str]) -> str | None:
        """Redis unreachable, or no live worker for some of ``rewards`` (what /readyz and 503s say)."""
        problem = self.producer.unavailable(rewards)
        return None if problem is None else str(problem)

    def workers(self) -> dict[str, int]:
        """Reward -> live workers, for /readyz."""
        return {name: (st.live_workers if (st := self.producer.state.get(name)) and self.producer.alive(name) else 0)
                for name in self.rewards}

    def queued(self) -> dict[str, int]:
        """Reward -> jobs waiting or in flight in its stream."""
        return {name: (st.depth if (st := self.producer.state.get(name)) else 0) for name in self.rewards}

    async def enqueue(self, request: ScoreRequest, rewards: list[str]) -> Submission:
        """Store the samples once and enqueue the jobs; returns without waiting."""
        await self.start()
        samples = [q.encode_wire_sample(s) for s in request.samples]
        chunks = {name: self.rewards[name].spec.max_batch_size for name in rewards}
        try:
            return await self.producer.submit(samples, chunks, self.timeout_s)
        except QueueError as exc:
            raise QueueUnavailable(str(exc)) from exc

    async def wait(self, sub: Submission) -> dict[str, list[ScoreResult]]:
        """Wait for every job of ``sub``; raises ``RewardUnavailable`` subclasses instead of hanging."""
        try:
            results = await self.producer.wait(sub, self.timeout_s)
        except NoLiveWorker as exc:
            raise RewardUnavailable(str(exc)) from exc
        except QueueError as exc:
            raise QueueUnavailable(str(exc)) from exc
        except QueueTimeout as exc:
            raise ScoreTimeout(str(exc)) from exc
        return {name: to_score_results(res) for name, res in results.items()}

    async def run(
        self, request: ScoreRequest, samples: list[Sample], rewards: list[str]
    ) -> dict[str, list[ScoreResult]]:
        """Enqueue ``request`` as sent and wait for the workers (``samples`` is empty: see ``remote``)."""
        return await self.wait(await self.enqueue(request, rewards))

    async def close(self) -> None:
        if self._started:
            await self.producer.close()
        else:
            await self.producer.r.aclose()
