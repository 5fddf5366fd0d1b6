"""Reading score requests from HTTP bodies, without a server."""

from __future__ import annotations

import asyncio
import json
import threading

from starlette.requests import Request

from reward_server import http_io
from shared.protocol import ScoreRequest

BODY = json.dumps({"rewards": {"a": 1.0}, "samples": [{"image": {"shape": [1, 1, 3], "data": "AAAA"}}]}).encode()


def _request(body: bytes) -> Request:
    scope = {"type": "http", "method": "POST", "path": "/v1/score",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
    sent = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return sent.pop(0) if sent else {"type": "http.disconnect"}

    return Request(scope, receive)


def _parse_thread(body: bytes, monkeypatch) -> tuple[ScoreRequest, bool]:
    """Parse ``body`` through read_score_request; returns it and whether it was validated on the loop."""
    threads = []
    original = http_io.parse_model

    def recording(*args):
        threads.append(threading.current_thread())
        return original(*args)

    monkeypatch.setattr(http_io, "parse_model", recording)

    async def main():
        return await http_io.read_score_request(_request(body), 1 << 24), threading.current_thread()

    parsed, loop_thread = asyncio.run(main())
    return parsed, threads == [loop_thread]


def test_large_bodies_are_validated_off_the_event_loop(monkeypatch):
    # validating a large JSON body is CPU work that stalled every other request (and /healthz)
    prompt = "x" * (http_io.INLINE_PARSE_BYTES + 1)
    body = json.dumps({"rewards": {"a": 1.0}, "samples": [
        {"image": {"shape": [1, 1, 3], "data": "AAAA"}, "prompt": prompt[:9000]}] * 8}).encode()
    assert len(body) > http_io.INLINE_PARSE_BYTES
    parsed, on_loop = _parse_thread(body, monkeypatch)
    assert len(parsed.samples) == 8 and not on_loop


def test_small_bodies_are_validated_inline(monkeypatch):
    # a thread hop costs more than validating a small body (and waits for the GIL under load)
    parsed, on_loop = _parse_thread(BODY, monkeypatch)
    assert isinstance(parsed, ScoreRequest) and parsed.samples[0].image.shape == (1, 1, 3) and on_loop
