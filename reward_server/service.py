"""Scoring a request: validate, decode, fan out to rewards, assemble the answer.

The service is transport-neutral: the FastAPI app calls it, and so do tests. Where the scores
are computed is the backend's business -- in this process (``LocalBackend``: one dynamic
batcher per reward) or on queue workers (the Redis backend).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from reward_server.batching import DynamicBatcher
from reward_server.registry import load_rewards
from reward_server.rewards.base import Reward
from shared.images import ImageLimits
from shared.protocol import InvalidRequest, Sample, ScoreRequest, ScoreResponse, decode_samples
from shared.scoring import ScoreResult, assemble_response, check_inputs


class RewardUnavailable(RuntimeError):
    """A reward exists in the config but nothing can compute it right now (503)."""


class Backend(Protocol):
    """Computes rewards for decoded samples."""

    async def run(
        self, request: ScoreRequest, samples: list[Sample], rewards: list[str]
    ) -> dict[str, list[ScoreResult]]: ...

    def ready(self) -> dict[str, bool]:
        """Reward name -> whether it can be computed now."""
        ...

    def unavailable(self, rewards: list[str]) -> str | None:
        """Why some of ``rewards`` cannot be computed now (what is actually wrong), or None."""
        ...

    async def close(self) -> None: ...


class LocalBackend:
    """Scores in this process: one ``DynamicBatcher`` per loaded reward."""

    def __init__(self, rewards: Mapping[str, Reward], observer_factory: Any = None):
        self.rewards = dict(rewards)
        self.batchers = {
            name: DynamicBatcher(
                reward.score,
                reward.spec.max_batch_size,
                reward.spec.max_wait_ms,
                name=name,
                observer=observer_factory(name) if observer_factory else None,
            )
            for name, reward in self.rewards.items()
        }

    async def run(
        self, request: ScoreRequest, samples: list[Sample], rewards: list[str]
    ) -> dict[str, list[ScoreResult]]:
        results = await asyncio.gather(*(self.batchers[name].submit(samples) for name in rewards))
        return dict(zip(rewards, results, strict=True))

    async def load(self) -> None:
        """Load every reward not yet loaded, each on its own model thread (see ``run_on_model_thread``)."""
        for name, reward in self.rewards.items():
            if not reward.loaded:
                await self.batchers[name].run_on_model_thread(load_rewards, {name: reward})

    def ready(self) -> dict[str, bool]:
        return {name: reward.loaded for name, reward in self.rewards.items()}

    def unavailable(self, rewards: list[str]) -> str | None:
        loading = [name for name in rewards if not self.rewards[name].loaded]
        return f"rewards {loading} are still loading their models (see /readyz)" if loading else None

    def queued(self) -> dict[str, int]:
        return {name: b.queued_samples for name, b in self.batchers.items()}

    async def close(self) -> None:
        await asyncio.gather(*(b.close() for b in self.batchers.values()))


class ScoringService:
    """Validates and scores requests against a set of configured rewards."""

    def __init__(
        self,
        rewards: Mapping[str, Reward],
        backend: Backend,
        limits: ImageLimits | None = None,
        max_samples_per_request: int = 1024,
    ):
        self.rewards = dict(rewards)
        self.backend = backend
        self.limits = limits or ImageLimits()
        self.max_samples = max_samples_per_request

    def validate(self, request: ScoreRequest) -> list[str]:
        """Check reward names and request size; returns the reward names to compute."""
        unknown = sorted(set(request.rewards) - set(self.rewards))
        if unknown:
            raise InvalidRequest(f"unknown rewards {unknown}; this server hosts: {', '.join(sorted(self.rewards))}")
        if not request.samples:
            raise InvalidRequest("the request has no samples to score")
        if len(request.samples) > self.max_samples:
            raise InvalidRequest(
                f"{len(request.samples)} samples in one request; the limit is {self.max_samples} (split the batch)"
            )
        ready = self.backend.ready()
        if not all(ready.get(name, False) for name in request.rewards):
            why = self.backend.unavailable(list(request.rewards))
            raise RewardUnavailable(why or f"rewards {sorted(request.rewards)} are not ready (see /readyz)")
        return list(request.rewards)

    async def score(self, request: ScoreRequest) -> ScoreResponse:
        """Validate, decode (off the event loop), compute and assemble."""
        names = self.validate(request)
        stop = threading.Event()
        try:
            samples = await asyncio.to_thread(decode_samples, request, self.limits, stop)
        finally:
            stop.set()  # a caller that timed out or left: its thread stops decoding (and allocating)
        check_inputs({name: self.rewards[name].inputs for name in names}, samples)
        results = await self.backend.run(request, samples, names) if samples else {n: [] for n in names}
        versions = {name: reward.version for name, reward in self.rewards.items()}
        return assemble_response(request.rewards, results, versions, len(samples))
