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


def test_request_bodies_are_validated_off_the_event_loop(monkeypatch):
    # validating a large JSON body is CPU work that stalled every other request (and /healthz)
    threads = []
    original = http_io.parse_model

    def recording(*args):
        threads.append(threading.current_thread())
        return original(*args)

    monkeypatch.setattr(http_io, "parse_model", recording)

    async def main():
        return await http_io.read_score_request(_request(BODY), 1 << 20), threading.current_thread()

    parsed, loop_thread = asyncio.run(main())
    assert isinstance(parsed, ScoreRequest) and parsed.samples[0].image.shape == (1, 1, 3)
    assert threads and threads[0] is not loop_thread
