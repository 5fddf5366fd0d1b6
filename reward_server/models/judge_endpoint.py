"""A judge behind any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, sglang, ...).

Requests go through ``chat_endpoint.ChatEndpoint`` (bounded concurrency, retries only on
408/429/5xx or a connection error) at temperature 0. Answers must contain one ``Score: N`` line
(``parse_score``); anything else is a failure with the reason, never a default.
"""

from __future__ import annotations

from collections.abc import Sequence

from reward_server.models.chat_endpoint import ChatEndpoint
from reward_server.models.judge import Judgement, JudgeQuery, parse_score


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
        self.endpoint = ChatEndpoint(
            base_url, model, api_key_env, concurrency, timeout_s, max_retries, max_tokens, image_format, retry_backoff_s
        )

    def judge(self, queries: Sequence[JudgeQuery]) -> list[Judgement]:
        """Judge all queries concurrently; called from a worker thread (no running event loop)."""
        return [self._judgement(answer.text, answer.error) for answer in self.endpoint.complete(queries)]

    @staticmethod
    def _judgement(text: str | None, error: str | None) -> Judgement:
        if text is None:
            return Judgement(None, f"judge {error}")
        parsed = parse_score(text)
        if isinstance(parsed, str):
            return Judgement(None, f"unparseable judge answer: {parsed}", {"answer": text[:500]})
        return Judgement(parsed, None, {"answer": text[:500]})
