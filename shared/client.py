"""Python client of the reward service: sync and async, HTTP (msgpack fast path).

    from shared.client import RewardClient
    client = RewardClient("http://127.0.0.1:8000")     # or "redis://host:6379/0": straight to the workers
    res = client.score(images, rewards={"clip_t": 1.0}, prompts=prompts)
    res.total, res.scores["clip_t"], res.errors, res.versions

The API key is ``api_key``, else ``PSR_API_KEY`` / ``PSR_API_KEY_FILE`` (see ``shared.api_keys``).
Large batches are split into requests of ``batch_size`` samples. Retries are bounded and only
for connection errors, 429 and 5xx; any other 4xx raises at once with the server's message.
A failed score is NaN in the arrays (and listed in ``errors``), never 0.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from shared.api_keys import check_key, client_api_key
from shared.images import DEFAULT_LIMITS, ImageFormat, compressed_size, encode_image
from shared.protocol import MSGPACK, pack, unpack

Subjects = Sequence[tuple[str, Any] | dict[str, Any]]


class RewardServiceError(RuntimeError):
    """The service refused a request (4xx) or kept failing after the allowed retries."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class RetryableError(RewardServiceError):
    """A failure worth another try: connection error, 429, 5xx."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message, status)
        self.retry_after = retry_after


@dataclass
class Scores:
    """Scores of a batch: arrays with NaN where a reward failed on a sample."""

    scores: dict[str, np.ndarray]
    total: np.ndarray
    errors: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, list[dict[str, Any] | None]] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.total)

    def valid(self, reward: str | None = None) -> np.ndarray:
        """Mask of samples with a finite total (or a finite score of one reward)."""
        values = self.total if reward is None else self.scores[reward]
        return np.isfinite(values)

    @classmethod
    def from_response(cls, data: dict[str, Any]) -> Scores:
        def column(values: list[float | None]) -> np.ndarray:
            return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

        return cls(
            scores={k: column(v) for k, v in data["scores"].items()},
            total=column(data["total"]),
            errors=list(data.get("errors", [])),
            details=dict(data.get("details", {})),
            versions=dict(data.get("versions", {})),
        )

    @classmethod
    def empty(cls, rewards: dict[str, float]) -> Scores:
        return cls(scores={k: np.empty(0) for k in rewards}, total=np.empty(0))

    @classmethod
    def concat(cls, parts: list[Scores]) -> Scores:
        """Join the answers of consecutive chunks; error sample indices are shifted to match."""
        if len(parts) == 1:
            return parts[0]
        errors, offset = [], 0
        details: dict[str, list] = {}
        names = list(parts[0].scores)
        for part in parts:
            errors += [{**e, "sample": e["sample"] + offset} for e in part.errors]
            for name in set(details) | set(part.details):
                details.setdefault(name, [None] * offset).extend(part.details.get(name, [None] * len(part)))
            offset += len(part)
        return cls(
            scores={n: np.concatenate([p.scores[n] for p in parts]) for n in names},
            total=np.concatenate([p.total for p in parts]),
            errors=errors,
            details=details,
            versions=parts[0].versions,
        )


def _subject(entry: tuple[str, Any] | dict[str, Any], fmt: ImageFormat) -> dict[str, Any]:
    if isinstance(entry, dict):
        category, reference = entry["category"], entry.get("reference")
    else:
        category, reference = entry
    return {"category": category, "reference": None if reference is None else encode_image(reference, fmt)}


def build_requests(
    images: Sequence[Any],
    rewards: dict[str, float],
    prompts: Sequence[str] | None = None,
    subjects: Sequence[Subjects] | None = None,
    metadata: Sequence[dict[str, Any]] | None = None,
    image_format: ImageFormat = "raw",
    batch_size: int = 256,
    max_pixels: int = DEFAULT_LIMITS.max_request_pixels,
) -> list[dict[str, Any]]:
    """Encode a batch as msgpack-ready request dicts of at most ``batch_size`` samples each, whose
    images (references included) decode to at most ``max_pixels`` (the server's default
    ``limits.max_request_pixels``)."""
    n = len(images)
    for name, seq in (("prompts", prompts), ("subjects", subjects), ("metadata", metadata)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries for {n} images")
    if not rewards:
        raise ValueError("rewards must name at least one reward, e.g. {'clip_t': 1.0}")
    samples = []
    for i, image in enumerate(images):
        sample: dict[str, Any] = {"image": encode_image(image, image_format)}
        if prompts is not None:
            sample["prompt"] = prompts[i]
        if subjects is not None:
            sample["subjects"] = [_subject(s, image_format) for s in subjects[i]]
        if metadata is not None:
            sample["metadata"] = metadata[i]
        samples.append(sample)
    chunks: list[list[dict[str, Any]]] = []
    pixels = 0
    for sample in samples:
        size = _pixels(sample["image"]) + sum(_pixels(s["reference"]) for s in sample.get("subjects", ())
                                              if s["reference"] is not None)
        if not chunks or len(chunks[-1]) == batch_size or pixels + size > max_pixels:
            chunks.append([])
            pixels = 0
        chunks[-1].append(sample)
        pixels += size
    return [{"rewards": dict(rewards), "samples": chunk} for chunk in chunks]


def _pixels(image: bytes | dict[str, Any]) -> int:
    if isinstance(image, dict):
        return image["shape"][0] * image["shape"][1]
    size = compressed_size(image)
    return size[0] * size[1] if size else 0


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    message = f"reward service answered {response.status_code}: {detail}"
    if response.status_code == 429 or response.status_code >= 500:
        raise RetryableError(message, response.status_code, _retry_after(response.headers.get("retry-after")))
    raise RewardServiceError(message, response.status_code)


def _retry_after(header: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header; None for an HTTP date or junk (then we back off as usual)."""
    try:
        seconds = float(header) if header else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


def _backoff(attempt: int, error: RetryableError, base: float) -> float:
    if error.retry_after is not None:
        return min(error.retry_after, 30.0)
    return min(base * 2**attempt, 10.0) * (0.5 + random.random())


def unreachable(url: str, exc: Exception) -> RetryableError:
    """The error for a request that never got an answer: names the URL and what went wrong."""
    return RetryableError(f"cannot reach the reward service at {url}: {exc or type(exc).__name__}")


def msgpack_headers(api_key: str | None) -> dict[str, str]:
    """Headers of every scoring call: msgpack both ways, the API key if any."""
    headers = {"content-type": MSGPACK, "accept": MSGPACK}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    return headers


class HttpTransport:
    """POSTs msgpack to ``/v1/score`` with httpx."""

    def __init__(self, url: str, api_key: str | None, timeout: float):
        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, headers=msgpack_headers(api_key), timeout=timeout)

    def score(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._client.post("/v1/score", content=pack(request))
        except httpx.TransportError as exc:  # connection refused/reset, timeouts
            raise unreachable(self.url, exc) from exc
        _raise_for_status(response)
        return unpack(response.content)

    def get(self, path: str) -> dict[str, Any]:
        try:
            response = self._client.get(path)
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from exc
        _raise_for_status(response)
        return response.json()

    def close(self) -> None:
        self._client.close()


QUEUE_SCHEMES = ("redis://", "rediss://", "unix://")
HTTP_SCHEMES = ("http://", "https://")


class ServiceURLError(ValueError):
    """A reward service URL without a scheme this client speaks."""


def check_service_url(url: str) -> str:
    """Return ``url`` if it starts with http(s):// or redis(s)://; else say how to write it."""
    url = str(url).strip()
    if url.startswith(HTTP_SCHEMES + QUEUE_SCHEMES) and len(url.split("://", 1)[1]) > 0:
        return url
    hint = f"http://{url}" if url and "://" not in url else "http://127.0.0.1:8000"
    raise ServiceURLError(f"reward service URL {url!r} needs a scheme: e.g. {hint} "
                          "(or redis://host:6379/0 for the queue)")


def make_transport(url: str, api_key: str | None, timeout: float) -> Any:
    """HTTP for ``http(s)://`` URLs; the Redis queue (straight to the workers) for ``redis(s)://``."""
    url = check_service_url(url)
    if url.startswith(QUEUE_SCHEMES):
        from shared.queue.transport import QueueTransport

        return QueueTransport(url, timeout=timeout)
    return HttpTransport(url, api_key, timeout)


class _ClientOptions:
    """What the sync and async clients share: batching, encoding and the retry policy."""

    def __init__(self, max_retries: int, batch_size: int, image_format: ImageFormat, retry_backoff: float):
        self.max_retries = max_retries
        self.batch_size = batch_size
        self.image_format = image_format
        self.retry_backoff = retry_backoff

    def _requests(self, images, rewards, prompts, subjects, metadata) -> list[dict[str, Any]]:
        return build_requests(images, rewards, prompts, subjects, metadata, self.image_format, self.batch_size)

    def _retry_delay(self, attempt: int, exc: RetryableError) -> float:
        """Seconds to wait before the next try; raises once the retries are used up."""
        if attempt == self.max_retries:
            raise RewardServiceError(f"{exc} (gave up after {attempt + 1} tries)", exc.status) from exc
        return _backoff(attempt, exc, self.retry_backoff)


class RewardClient(_ClientOptions):
    """Synchronous client; ``submit`` runs ``score`` in a background thread and returns a Future."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 600.0,
        max_retries: int = 3,
        batch_size: int = 256,
        image_format: ImageFormat = "raw",
        retry_backoff: float = 0.5,
        transport: Any = None,
    ):
        super().__init__(max_retries, batch_size, image_format, retry_backoff)
        self.url = url
        if transport is None:
            api_key = client_api_key() if api_key is None else check_key(api_key, "api_key")
            transport = make_transport(url, api_key, timeout)
        self.transport = transport
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def score(
        self,
        images: Sequence[Any],
        rewards: dict[str, float],
        prompts: Sequence[str] | None = None,
        subjects: Sequence[Subjects] | None = None,
        metadata: Sequence[dict[str, Any]] | None = None,
    ) -> Scores:
        """Score a batch of images; see the module docstring."""
        requests = self._requests(images, rewards, prompts, subjects, metadata)
        if not requests:
            return Scores.empty(rewards)
        return Scores.concat([Scores.from_response(self._send(r)) for r in requests])

    def submit(self, *args: Any, **kwargs: Any) -> Future[Scores]:
        """Like ``score`` but returns at once; the result comes in a Future."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="reward-client")
        return self._executor.submit(self.score, *args, **kwargs)

    def rewards(self) -> list[dict[str, Any]]:
        """The rewards the service hosts (``GET /v1/rewards``)."""
        return self.transport.get("/v1/rewards")["rewards"]

    def wait_until_ready(self, timeout: float = 300.0, every: float = 0.05, rewards: Sequence[str] | None = None) -> None:
        """Block until ``rewards`` (default: every hosted reward) report ready -- models loaded, live
        workers. A service that cannot be reached yet (still starting) is retried until ``timeout``;
        a reward it does not host raises at once, naming the ones it hosts."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                hosted = {r["name"]: r for r in self.rewards()}
            except RetryableError as exc:
                if time.monotonic() > deadline:
                    raise RewardServiceError(f"{exc} (waited {timeout:g} s)", exc.status) from exc
                time.sleep(max(every, 0.25))
                continue
            names = list(hosted) if rewards is None else list(rewards)
            missing = [n for n in names if n not in hosted]
            if missing:
                raise RewardServiceError(
                    f"the reward service at {self.url} does not host {missing}; it hosts {sorted(hosted)}", 422)
            loading = [n for n in names if not hosted[n].get("ready", False)]
            if not loading:
                return
            if time.monotonic() > deadline:
                raise RewardServiceError(f"rewards {loading} of the reward service at {self.url} were not ready "
                                         f"within {timeout:g} s (see its /readyz)")
            time.sleep(every)

    def _send(self, request: dict[str, Any]) -> dict[str, Any]:
        for attempt in range(self.max_retries + 1):
            try:
                return self.transport.score(request)
            except RetryableError as exc:
                time.sleep(self._retry_delay(attempt, exc))
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self.transport.close()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncRewardClient(_ClientOptions):
    """Asynchronous client with the same behaviour as ``RewardClient``."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 600.0,
        max_retries: int = 3,
        batch_size: int = 256,
        image_format: ImageFormat = "raw",
        retry_backoff: float = 0.5,
        max_concurrency: int = 4,
    ):
        if check_service_url(url).startswith(QUEUE_SCHEMES):
            raise ServiceURLError(
                f"AsyncRewardClient speaks HTTP only, got {url!r}; use RewardClient for redis:// URLs"
            )
        super().__init__(max_retries, batch_size, image_format, retry_backoff)
        self.url = url.rstrip("/")
        api_key = client_api_key() if api_key is None else check_key(api_key, "api_key")
        self._client = httpx.AsyncClient(base_url=self.url, headers=msgpack_headers(api_key), timeout=timeout)
        self._limit = asyncio.Semaphore(max_concurrency)

    async def score(
        self,
        images: Sequence[Any],
        rewards: dict[str, float],
        prompts: Sequence[str] | None = None,
        subjects: Sequence[Subjects] | None = None,
        metadata: Sequence[dict[str, Any]] | None = None,
    ) -> Scores:
        requests = self._requests(images, rewards, prompts, subjects, metadata)
        if not requests:
            return Scores.empty(rewards)
        parts = await asyncio.gather(*(self._send(r) for r in requests))
        return Scores.concat([Scores.from_response(p) for p in parts])

    async def _post(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            async with self._limit:
                response = await self._client.post("/v1/score", content=pack(request))
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from exc
        _raise_for_status(response)
        return unpack(response.content)

    async def _send(self, request: dict[str, Any]) -> dict[str, Any]:
        for attempt in range(self.max_retries + 1):
            try:
                return await self._post(request)
            except RetryableError as exc:
                await asyncio.sleep(self._retry_delay(attempt, exc))
        raise AssertionError("unreachable")

    async def rewards(self) -> list[dict[str, Any]]:
        response = await self._client.get("/v1/rewards")
        _raise_for_status(response)
        return response.json()["rewards"]

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> AsyncRewardClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
