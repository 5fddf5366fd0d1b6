"""A fake OpenAI-style chat server (FastAPI + uvicorn over real HTTP, in a thread) for endpoint tests."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import re
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image


class FakeChatServer:
    """Answers ``/v1/chat/completions`` with the text after ``ANSWER=`` in the prompt.

    ``FAIL=<n>x<status>`` in the prompt makes the first n requests with that prompt fail with the
    status. It records the image count of each request and the most requests in flight at once.
    """

    def __init__(self):
        self.app = FastAPI()
        self.in_flight = self.max_in_flight = 0
        self.failures: dict[str, int] = {}
        self.image_sizes: list[list[tuple[int, int]]] = []
        self.bodies: list[dict] = []
        self.app.post("/v1/chat/completions")(self.complete)
        self.app.get("/v1/models")(self.models)

    async def models(self):
        return {"object": "list", "data": [{"id": "fake", "object": "model"}]}

    async def complete(self, request: Request):
        body = await request.json()
        self.bodies.append(body)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.02)  # a little latency so concurrent requests overlap
            content = body["messages"][0]["content"]
            text = " ".join(p["text"] for p in content if p["type"] == "text")
            sizes = []
            for part in content:
                if part["type"] == "image_url":
                    data = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
                    sizes.append(Image.open(io.BytesIO(data)).size)
            self.image_sizes.append(sizes)
            fail = re.search(r"FAIL=(\d+)x(\d+)", text)
            if fail:
                left = self.failures.setdefault(text, int(fail.group(1)))
                if left > 0:
                    self.failures[text] = left - 1
                    return JSONResponse({"error": "busy"}, status_code=int(fail.group(2)))
            if "BROKEN" in text:
                return JSONResponse({"unexpected": True})
            answer = re.search(r"ANSWER=(.*?)\|", text).group(1).replace("\\n", "\n")
            return {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}], "model": body["model"]}
        finally:
            self.in_flight -= 1


@contextlib.contextmanager
def running_chat_server() -> Iterator[tuple[FakeChatServer, str]]:
    """Serve a ``FakeChatServer`` on a free port; yields it and its ``/v1`` base URL."""
    fake = FakeChatServer()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(fake.app, log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        assert time.monotonic() < deadline, "the fake chat server did not start"
        time.sleep(0.01)
    try:
        yield fake, f"http://127.0.0.1:{port}/v1"
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
