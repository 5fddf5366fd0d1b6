"""Queue transport for ``RewardClient``: talk to the workers through Redis, without an HTTP front.

    from shared.client import RewardClient
    from shared.queue.transport import QueueTransport
    client = RewardClient("redis://host:6379/0")   # picks QueueTransport for redis(s):// URLs

Answers are the same as over HTTP: the same jobs, the same workers, the same assembly of the
response (``shared.scoring.assemble_response``). The transport learns each reward's
batch size and version from what the workers publish. Errors map to the client's exceptions:
no live worker or Redis down -> ``RetryableError`` (like a 503), each saying which; a reward no
worker ever registered (a misspelt name) or a malformed request -> ``RewardServiceError`` (like a 422).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
from pydantic import ValidationError

from shared.client import RetryableError, RewardServiceError
from shared.protocol import InvalidRequest, Sample, ScoreRequest, Subject
from shared.queue import messages as q
from shared.queue.producer import (
    REDIS_ERRORS,
    NoLiveWorker,
    QueueError,
    QueueProducer,
    QueueTimeout,
    UnknownReward,
    connect,
)
from shared.scoring import ScoreResult, assemble_response, check_inputs

DEFAULT_CHUNK = 32


class QueueTransport:
    """Synchronous transport (``score``/``get``/``close``) running a producer on a private loop."""

    def __init__(self, redis_url: str, timeout: float = 600.0, settings: q.QueueSettings | None = None):
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="psr-queue-client", daemon=True)
        self._thread.start()
        self.producer = QueueProducer(connect(redis_url), settings or q.QueueSettings())
        self._call(self.producer.start())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def score(self, request: dict[str, Any]) -> dict[str, Any]:
        """Score one request dict (as built by ``shared.client.build_requests``); returns the response dict."""
        try:
            parsed = ScoreRequest.model_validate(request)
        except ValidationError as exc:
            raise RewardServiceError(f"invalid request: {exc}", 422) from exc
        return self._call(self._score(parsed))

    async def _score(self, request: ScoreRequest) -> dict[str, Any]:
        names = list(request.rewards)
        problem = self.producer.unavailable(names)
        if isinstance(problem, UnknownReward):  # like an unknown reward over HTTP: retrying will not help
            raise RewardServiceError(str(problem), 422)
        if problem is not None:
            raise RetryableError(str(problem), 503)
        state = self.producer.state
        _check_inputs(request, {n: state[n].description.get("inputs", ()) for n in names})
        chunks = {n: int(state[n].description.get("max_batch_size") or DEFAULT_CHUNK) for n in names}
        samples = [q.encode_wire_sample(s) for s in request.samples]
        try:
            sub = await self.producer.submit(samples, chunks, self.timeout)
            results = await self.producer.wait(sub, self.timeout)
        except (NoLiveWorker, QueueError) as exc:
            raise RetryableError(str(exc), 503) from exc
        except QueueTimeout as exc:
            raise RetryableError(str(exc), 504) from exc
        per_reward = {
            name: [ScoreResult(s, d, e) for r in res for s, e, d in zip(r.scores, r.errors, r.details, strict=True)]
            for name, res in results.items()
        }
        versions = {name: (res[0].version if res else state[name].description.get("version", "")) for name, res in
                    results.items()}
        return assemble_response(request.rewards, per_reward, versions, len(request.samples)).model_dump(mode="json")

    def get(self, path: str) -> dict[str, Any]:
        """Only ``/v1/rewards``: what the live workers publish."""
        if path.rstrip("/") != "/v1/rewards":
            raise RewardServiceError(f"the queue transport has no route {path}", 404)
        try:
            self._call(self.producer.refresh())
        except REDIS_ERRORS as exc:
            raise RetryableError(f"Redis at {self.producer.where()} is unreachable: {exc}", 503) from exc
        return {"rewards": [{**st.description, "ready": self.producer.alive(name)}
                            for name, st in sorted(self.producer.state.items())]}

    def close(self) -> None:
        try:
            self._call(self.producer.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)


def _check_inputs(request: ScoreRequest, inputs: dict[str, Any]) -> None:
    """Refuse (422, as over HTTP) samples lacking an input a reward needs, before anything is queued."""
    placeholder = np.empty((0, 0, 3), np.uint8)  # only the presence of images matters here
    samples = [Sample(image=placeholder, prompt=s.prompt, subjects=tuple(
        Subject(c.category, None if c.reference is None else placeholder) for c in s.subjects))
        for s in request.samples]  # fmt: skip
    try:
        check_inputs({n: frozenset(i) for n, i in inputs.items()}, samples)
    except InvalidRequest as exc:
        raise RewardServiceError(f"invalid request: {exc}", 422) from exc
