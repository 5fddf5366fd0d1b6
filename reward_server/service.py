"""Scoring a request: validate, admit, decode, fan out to rewards, assemble the answer.

The service is transport-neutral: the FastAPI app calls it, and so do tests. Where the scores
are computed is the backend's business -- in this process (``LocalBackend``: one dynamic
batcher per reward) or on queue workers (the Redis backend).

Where images are decoded: a small request (up to ``INLINE_COMPRESSED_PIXELS`` of PNG/JPEG and
``INLINE_RAW_PIXELS`` of raw pixels) is decoded on the event loop, alone or under load: a thread
hop (a future, two wake-ups and a GIL hand-over) costs more than decoding a few small images
(see ``python -m bench.peers`` at 8 and 32 callers). Larger images are decoded on a thread: Pillow releases the GIL while it decodes, so that overlaps with
the model and with the loop's work on other requests.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Mapping
from typing import Any, Protocol, TypeVar

from reward_server.batching import DynamicBatcher
from reward_server.limits import RELEASE_AFTER_PIXELS, PixelBudget, release_memory
from reward_server.registry import load_rewards
from reward_server.rewards.base import Reward
from shared.images import ImageLimits
from shared.protocol import (
    InvalidRequest,
    RawImage,
    Sample,
    ScoreRequest,
    ScoreResponse,
    decode_samples,
    image_pixels,
    request_images,
)
from shared.scoring import ScoreResult, assemble_response, check_inputs

# A request is decoded on the event loop up to these sizes. PNG decodes at
# ~20-70 ns per pixel on one core (JPEG ~3x faster), so 16K pixels (four 64 px images) take
# ~0.3-1 ms, about what a thread hop costs on a busy machine. Raw pixels are only copied.
INLINE_COMPRESSED_PIXELS = 16_384
INLINE_RAW_PIXELS = 1 << 20

T = TypeVar("T")


async def within(coro: Coroutine[Any, Any, T], seconds: float) -> T:
    """``await coro`` with a timeout (``TimeoutError``), in the caller's task: ``asyncio.wait_for``
    on Python < 3.12 runs the coroutine as a second task, one more loop iteration per request."""
    if hasattr(asyncio, "timeout"):  # Python 3.11+
        async with asyncio.timeout(seconds):
            return await coro
    return await asyncio.wait_for(coro, seconds)


class RewardUnavailable(RuntimeError):
    """A reward exists in the config but nothing can compute it right now (503)."""


class Backend(Protocol):
    """Computes rewards for decoded samples.

    A ``remote`` backend (queue workers) scores the request as sent and its workers decode their
    own copy: ``run`` then gets no decoded samples, so the front holds no pixels while it waits."""

    remote: bool

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

    remote = False

    def __init__(self, rewards: Mapping[str, Reward], observer_factory: Any = None):
        self.rewards = dict(rewards)
        self.batchers = {
            name: DynamicBatcher(
                reward.score,
                reward.spec.max_batch_size,
                name=name,
                observer=observer_factory(name) if observer_factory else None,
                regroup_ms=reward.spec.max_wait_ms,
            )
            for name, reward in self.rewards.items()
        }

    async def run(
        self, request: ScoreRequest, samples: list[Sample], rewards: list[str]
    ) -> dict[str, list[ScoreResult]]:
        if len(rewards) == 1:  # the common case, without gather's extra task
            return {rewards[0]: await self.batchers[rewards[0]].submit(samples)}
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
        budget: PixelBudget | None = None,
    ):
        self.rewards = dict(rewards)
        self.backend = backend
        self.limits = limits or ImageLimits()
        self.max_samples = max_samples_per_request
        self.budget = budget or PixelBudget(2 * self.limits.max_request_pixels)
        self.versions = {name: reward.version for name, reward in self.rewards.items()}  # hashes the spec: once
        self._releasing = False

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

    def measure(self, request: ScoreRequest) -> tuple[int, int]:
        """(compressed, raw) pixels the request's images decode to, from their headers; refuses
        (422, naming the image) a request over ``max_request_pixels`` before anything is decoded.
        An unreadable header counts as the largest image allowed (decoding will say what is wrong)."""
        compressed = raw = 0
        limit = self.limits.max_request_pixels
        for image, where in request_images(request):
            pixels = image_pixels(image)
            if isinstance(image, RawImage):
                raw += pixels
            elif pixels is None:
                compressed += self.limits.max_pixels
                continue  # not a reason to refuse: the decoder's message will be the better one
            else:
                compressed += pixels
            if compressed + raw > limit:
                raise InvalidRequest(f"{where}: the request's images decode to more than {limit} pixels in "
                                     "all; send fewer or smaller images per request")
        return compressed, raw

    async def score(self, request: ScoreRequest) -> ScoreResponse:
        """Validate, wait for room in the pixel budget, decode, compute and assemble.

        The decoded images count against the budget while this process holds them: until scored
        here, or only until checked when queue workers score the request (they decode their own copy)."""
        names = self.validate(request)
        compressed, raw = self.measure(request)
        # Decoding stops at max_request_pixels, so a request never holds more, whatever its unreadable
        # headers were charged: without the cap, many of them would wait for room that never comes (503).
        pixels = min(compressed + raw, self.limits.max_request_pixels)
        remote = self.backend.remote
        results: dict[str, list[ScoreResult]] = {}
        try:
            async with self.budget.hold(pixels):
                samples = await self._decode_checked(request, names, compressed, raw)
                if not remote:
                    results = await self.backend.run(request, samples, names)
                del samples  # a remote backend's wait must not keep the decoded images alive
        finally:
            if pixels >= RELEASE_AFTER_PIXELS:
                self._release_memory()
        if remote:  # the workers decode their own copy: nothing is held here while they score
            results = await self.backend.run(request, [], names)
        return assemble_response(request.rewards, results, self.versions, len(request.samples))

    async def _decode_checked(self, request: ScoreRequest, names: list[str], compressed: int,
                              raw: int) -> list[Sample]:
        """Decode the request's images (see the module docstring for where) and check each reward's inputs."""
        if compressed <= INLINE_COMPRESSED_PIXELS and raw <= INLINE_RAW_PIXELS:
            samples = decode_samples(request, self.limits)
        else:
            stop = threading.Event()
            try:
                samples = await asyncio.to_thread(decode_samples, request, self.limits, stop)
            finally:
                stop.set()  # a caller that timed out or left: its thread stops decoding (and allocating)
        check_inputs({name: self.rewards[name].inputs for name in names}, samples)
        return samples

    def _release_memory(self) -> None:
        """Trim the heap on a thread, one trim at a time, a moment after the answer: by then the
        model thread has dropped its references to the request's images too."""
        if self._releasing:
            return
        self._releasing = True
        loop = asyncio.get_running_loop()

        def trim() -> None:
            try:
                release_memory()
            finally:
                self._releasing = False

        loop.call_later(0.2, lambda: loop.run_in_executor(None, trim))
