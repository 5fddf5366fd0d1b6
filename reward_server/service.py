"""Scoring a request: validate, decode, fan out to rewards, assemble the answer.

The service is transport-neutral: the FastAPI app calls it, and so do tests. Where the scores
are computed is the backend's business -- in this process (``LocalBackend``: one dynamic
batcher per reward) or on queue workers (the Redis backend).
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from reward_server.batching import DynamicBatcher
from reward_server.registry import load_rewards
from reward_server.rewards.base import Reward, ScoreResult
from shared.images import ImageLimits
from shared.protocol import InvalidRequest, Sample, SampleError, ScoreRequest, ScoreResponse, decode_samples


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

    def queued(self) -> dict[str, int]:
        return {name: b.queued_samples for name, b in self.batchers.items()}

    async def close(self) -> None:
        await asyncio.gather(*(b.close() for b in self.batchers.values()))


def check_inputs(rewards: Mapping[str, Reward], names: list[str], samples: list[Sample]) -> None:
    """Refuse (422) a request whose samples lack an input a requested reward needs."""
    problems = []
    for name in names:
        for i, sample in enumerate(samples):
            why = rewards[name].check_sample(sample)
            if why:
                problems.append(f"samples[{i}]: {why}")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise InvalidRequest("; ".join(problems[:5]) + more)


def assemble_response(
    weights: Mapping[str, float], results: Mapping[str, list[ScoreResult]], versions: Mapping[str, str], n: int
) -> ScoreResponse:
    """Per-reward score lists, weighted totals (null if any part failed), errors and details."""
    scores: dict[str, list[float | None]] = {}
    details: dict[str, list[dict[str, Any] | None]] = {}
    errors: list[SampleError] = []
    for name, per_sample in results.items():
        column = []
        for i, result in enumerate(per_sample):
            value = result.score
            if value is not None and not math.isfinite(value):
                result = ScoreResult.failed(f"reward produced a non-finite score ({value})", result.details)
                value = None
            if value is None:
                errors.append(SampleError(sample=i, reward=name, message=result.error or "reward gave no score"))
            column.append(None if value is None else float(value))
        scores[name] = column
        if any(r.details for r in per_sample):
            details[name] = [r.details for r in per_sample]
    total: list[float | None] = []
    for i in range(n):
        parts = [scores[name][i] for name in weights]
        value = None if any(p is None for p in parts) else sum(weights[k] * scores[k][i] for k in weights)
        if value is not None and not math.isfinite(value):  # huge weights overflow; JSON has no inf
            errors.append(SampleError(sample=i, reward="total", message=f"weighted total is not finite ({value})"))
            value = None
        total.append(value)
    return ScoreResponse(
        scores=scores, total=total, errors=errors, details=details, versions={k: versions[k] for k in weights}
    )


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
        down = [name for name in request.rewards if not ready.get(name, False)]
        if down:
            raise RewardUnavailable(f"rewards {down} are not ready: model still loading or no live worker (see /readyz)")
        return list(request.rewards)

    async def score(self, request: ScoreRequest) -> ScoreResponse:
        """Validate, decode (off the event loop), compute and assemble."""
        names = self.validate(request)
        stop = threading.Event()
        try:
            samples = await asyncio.to_thread(decode_samples, request, self.limits, stop)
        finally:
            stop.set()  # a caller that timed out or left: its thread stops decoding (and allocating)
        check_inputs(self.rewards, names, samples)
        results = await self.backend.run(request, samples, names) if samples else {n: [] for n in names}
        versions = {name: reward.version for name, reward in self.rewards.items()}
        return assemble_response(request.rewards, results, versions, len(samples))
