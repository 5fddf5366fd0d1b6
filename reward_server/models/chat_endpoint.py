"""Any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, sglang, ...): one client for all callers.

Requests run concurrently (at most ``concurrency`` in flight) on an ``httpx.AsyncClient``; a
request is retried only on 408/429/5xx or a connection error, at most ``max_retries`` times.
Images travel as data URLs. The judge (``judge_endpoint.py``) and ``psr datagen``'s prompt
writer and re-captioner use it; each parses the answer text its own strict way.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from reward_server.models.vlm import ChatQuery
from shared.images import encode_image

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# The endpoint itself is misconfigured (wrong base URL or model name, a rejected API key): no
# query can succeed, so the caller must stop rather than record every query as failed.
CONFIG_STATUS = frozenset({401, 403, 404})


@dataclass
class ChatAnswer:
    """The answer text, or ``None`` with why there is none (``unavailable``: the endpoint could not be
    reached, kept failing with 408/429/5xx or refused the model/key with 401/403/404, i.e. not
    this query's fault)."""

    text: str | None
    error: str | None = None
    unavailable: bool = False


def _data_url(image: Any, fmt: str) -> str:
    data = encode_image(image, fmt=fmt, quality=95)
    mime = "image/png" if fmt == "png" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


class ChatEndpoint:
    """Sends each query as one chat completion; answers keep the order of the queries."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 2,
        max_tokens: int = 32,
        image_format: str = "jpeg",
        retry_backoff_s: float = 0.5,
        sampling: dict[str, Any] | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.model = model
        self.headers = {}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise RuntimeError(f"environment variable {api_key_env} (the endpoint's API key) is not set")
            self.headers["Authorization"] = f"Bearer {key}"
        self.concurrency, self.timeout_s, self.max_retries = concurrency, timeout_s, max_retries
        self.max_tokens, self.image_format, self.retry_backoff_s = max_tokens, image_format, retry_backoff_s
        self.sampling = {"temperature": 0.0, **(sampling or {})}

    def body(self, query: ChatQuery, seed: int | None = None) -> dict[str, Any]:
        """The chat-completion request for one query: images become data URLs in order."""
        images = iter(query.images)
        content = []
        for part in query.content:
            if part["type"] == "image":
                content.append({"type": "image_url", "image_url": {"url": _data_url(next(images), self.image_format)}})
            else:
                content.append({"type": "text", "text": part["text"]})
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.max_tokens,
            **self.sampling,
        }
        if seed is not None:  # vLLM and sglang honour a per-request seed: sampled answers are reproducible
            body["seed"] = seed
        return body

    def check_reachable(self, timeout_s: float = 10.0) -> str | None:
        """``None`` when the endpoint answers ``GET /models`` and serves ``model``, else what is wrong.

        A 404 means the base URL is wrong (it usually ends in ``/v1``); 401/403 a missing or
        rejected API key; a model list without ``model`` a wrong served-model name. Any other
        answer is taken as reachable (not every server implements ``/models`` fully)."""
        try:
            response = httpx.get(self.base_url + "/models", headers=self.headers, timeout=timeout_s)
        except httpx.HTTPError as exc:
            return f"{self.base_url} is unreachable ({type(exc).__name__}: {exc})"
        if response.status_code == 404:
            return (f"{self.base_url}/models answered HTTP 404: is the base URL right? An OpenAI-compatible "
                    "server's usually ends in /v1, e.g. http://host:8000/v1")
        if response.status_code in (401, 403):
            return f"{self.base_url} answered HTTP {response.status_code}: the API key is missing or rejected"
        try:
            served = [m["id"] for m in response.json()["data"]]
        except (ValueError, KeyError, TypeError):
            return None
        if served and self.model not in served:
            return (f"{self.base_url} does not serve the model {self.model!r} (it serves {', '.join(map(str, served))}): "
                    "set the model name to one of them")
        return None

    def complete(self, queries: Sequence[ChatQuery], seeds: Sequence[int | None] | None = None) -> list[ChatAnswer]:
        """Answer all queries concurrently; called from a thread without a running event loop."""
        seeds = list(seeds) if seeds is not None else [None] * len(queries)
        return asyncio.run(self._complete_all(queries, seeds))

    async def _complete_all(self, queries: Sequence[ChatQuery], seeds: Sequence[int | None]) -> list[ChatAnswer]:
        limit = asyncio.Semaphore(self.concurrency)
        async with httpx.AsyncClient(timeout=self.timeout_s, headers=self.headers) as client:

            async def one(query: ChatQuery, seed: int | None) -> ChatAnswer:
                async with limit:
                    return await self._complete_one(client, query, seed)

            return list(await asyncio.gather(*(one(q, s) for q, s in zip(queries, seeds, strict=True))))

    async def _complete_one(self, client: httpx.AsyncClient, query: ChatQuery, seed: int | None) -> ChatAnswer:
        body = self.body(query, seed)
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(self.retry_backoff_s * 2 ** (attempt - 1))
            try:
                response = await client.post(self.url, json=body)
            except httpx.HTTPError as exc:  # connection refused, timeout, ...
                last = f"endpoint unreachable: {exc!r}"
                continue
            if response.status_code in RETRY_STATUS:
                last = f"endpoint answered HTTP {response.status_code}: {response.text[:200]}"
                continue
            if response.status_code != 200:
                return ChatAnswer(None, f"endpoint answered HTTP {response.status_code}: {response.text[:200]}",
                                  unavailable=response.status_code in CONFIG_STATUS)
            return self._read(response)
        return ChatAnswer(None, f"{last} (after {self.max_retries + 1} attempts)", unavailable=True)

    @staticmethod
    def _read(response: httpx.Response) -> ChatAnswer:
        try:
            text = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return ChatAnswer(None, f"endpoint sent no chat completion: {response.text[:200]!r}")
        if not isinstance(text, str):
            return ChatAnswer(None, f"the answer is not text: {text!r:.200}")
        return ChatAnswer(text)
