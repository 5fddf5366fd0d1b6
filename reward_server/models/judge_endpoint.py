"""A judge behind any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, sglang, ...).

Requests run concurrently (at most ``concurrency`` in flight) on an ``httpx.AsyncClient``; a
request is retried only on 408/429/5xx or a connection error, at most ``max_retries`` times.
Answers must contain one ``Score: N`` line (``parse_score``); anything else is a failure with the
reason, never a default.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Sequence
from typing import Any

import httpx

from reward_server.models.judge import Judgement, JudgeQuery, parse_score
from shared.images import encode_image

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def _data_url(image: Any, fmt: str) -> str:
    data = encode_image(image, fmt=fmt, quality=95)
    mime = "image/png" if fmt == "png" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


class EndpointJudge:
    """Sends each query as one chat completion and parses a strict ``Score: N`` answer."""

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
    ):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.headers = {}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise RuntimeError(f"environment variable {api_key_env} (the judge endpoint's API key) is not set")
            self.headers["Authorization"] = f"Bearer {key}"
        self.concurrency, self.timeout_s, self.max_retries = concurrency, timeout_s, max_retries
        self.max_tokens, self.image_format, self.retry_backoff_s = max_tokens, image_format, retry_backoff_s

    def body(self, query: JudgeQuery) -> dict[str, Any]:
        """The chat-completion request for one query: images become data URLs in order."""
        images = iter(query.images)
        content = []
        for part in query.content:
            if part["type"] == "image":
                content.append({"type": "image_url", "image_url": {"url": _data_url(next(images), self.image_format)}})
            else:
                content.append({"type": "text", "text": part["text"]})
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.max_tokens,
            "temperature": 0.0,
        }

    def judge(self, queries: Sequence[JudgeQuery]) -> list[Judgement]:
        """Judge all queries concurrently; called from a worker thread (no running event loop)."""
        return asyncio.run(self._judge_all(queries))

    async def _judge_all(self, queries: Sequence[JudgeQuery]) -> list[Judgement]:
        limit = asyncio.Semaphore(self.concurrency)
        async with httpx.AsyncClient(timeout=self.timeout_s, headers=self.headers) as client:

            async def one(query: JudgeQuery) -> Judgement:
                async with limit:
                    return await self._judge_one(client, query)

            return list(await asyncio.gather(*(one(q) for q in queries)))

    async def _judge_one(self, client: httpx.AsyncClient, query: JudgeQuery) -> Judgement:
        body = self.body(query)
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(self.retry_backoff_s * 2 ** (attempt - 1))
            try:
                response = await client.post(self.url, json=body)
            except httpx.HTTPError as exc:  # connection refused, timeout, ...
                last = f"judge endpoint unreachable: {exc!r}"
                continue
            if response.status_code in RETRY_STATUS:
                last = f"judge endpoint answered HTTP {response.status_code}: {response.text[:200]}"
                continue
            if response.status_code != 200:
                return Judgement(None, f"judge endpoint answered HTTP {response.status_code}: {response.text[:200]}")
            return self._read(response)
        return Judgement(None, f"{last} (after {self.max_retries + 1} attempts)")

    @staticmethod
    def _read(response: httpx.Response) -> Judgement:
        try:
            text = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return Judgement(None, f"judge endpoint sent no chat completion: {response.text[:200]!r}")
        if not isinstance(text, str):
            return Judgement(None, f"judge answer is not text: {text!r:.200}")
        parsed = parse_score(text)
        if isinstance(parsed, str):
            return Judgement(None, f"unparseable judge answer: {parsed}", {"answer": text[:500]})
        return Judgement(parsed, None, {"answer": text[:500]})
