"""A closed-loop HTTP/1.1 load generator that costs the server's CPU as little as possible.

``callers`` connections each send a request, wait for its answer, and send the next one, for
``duration`` seconds after a warm-up. Requests are prebuilt bytes and answers are read by
``Content-Length`` without parsing, so on a small machine the client takes little of the CPU
the servers compete for, and exactly the same amount whichever server it measures. A Python
HTTP library (httpx, requests) would cost several times more per request and blur the figures.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class HttpRequest:
    """One prebuilt POST: its wire bytes, and how many images it carries."""

    data: bytes
    images: int = 1


def build_post(host: str, port: int, path: str, body: bytes, content_type: str, images: int = 1) -> HttpRequest:
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nAccept: */*\r\n\r\n")
    return HttpRequest(head.encode("latin-1") + body, images)


@dataclass(frozen=True)
class LoadResult:
    images_per_s: float
    p50_ms: float
    p90_ms: float
    requests: int  # measured: sent after the warm-up, answered before the end
    errors: int
    first_error: str = ""
    answered: int = 0  # images answered during the whole run, warm-up and tail included (for CPU per image)


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return status, body


@dataclass
class _Tally:
    """One caller's answers that were sent after the warm-up and done before the end."""

    images: int = 0
    first_sent: float = 0.0
    last_done: float = 0.0
    answered: int = 0

    @property
    def rate(self) -> float:
        """Images per second over exactly the requests counted (no partial request at either end)."""
        return self.images / (self.last_done - self.first_sent) if self.images else 0.0


async def _caller(host: str, port: int, requests: list[HttpRequest], offset: int, warm_until: float,
                  stop_at: float, latencies: list[float], tally: _Tally, errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = offset
    try:
        while time.perf_counter() < stop_at:
            request = requests[i % len(requests)]
            i += 1
            sent = time.perf_counter()
            writer.write(request.data)
            status, body = await _read_answer(reader)
            done = time.perf_counter()
            tally.answered += request.images if status == 200 else 0
            if sent >= warm_until and done <= stop_at:
                if status != 200:
                    errors.append(f"HTTP {status}: {body[:200]!r}")
                    continue
                latencies.append(done - sent)
                if not tally.images:
                    tally.first_sent = sent
                tally.images += request.images
                tally.last_done = done
    finally:
        writer.close()


async def _run(host: str, port: int, requests: list[HttpRequest], callers: int, duration: float,
               warmup: float) -> LoadResult:
    latencies: list[float] = []
    tallies = [_Tally() for _ in range(callers)]
    errors: list[str] = []
    start = time.perf_counter()
    warm_until, stop_at = start + warmup, start + warmup + duration
    await asyncio.gather(*(
        _caller(host, port, requests, k * 7, warm_until, stop_at, latencies, tallies[k], errors)
        for k in range(callers)
    ))
    ms = sorted(x * 1000 for x in latencies) or [float("nan")]
    return LoadResult(
        images_per_s=sum(t.rate for t in tallies),  # closed loop: the callers' rates add up
        p50_ms=statistics.median(ms),
        p90_ms=ms[min(len(ms) - 1, int(0.9 * len(ms)))],
        requests=len(latencies),
        errors=len(errors),
        first_error=errors[0] if errors else "",
        answered=sum(t.answered for t in tallies),
    )


def run_load(host: str, port: int, requests: list[HttpRequest], callers: int, duration: float,
             warmup: float | None = None) -> LoadResult:
    """Closed loop: ``callers`` connections, each with one request in flight, for ``duration`` s after a
    warm-up (default: a third of ``duration``). Each caller's rate counts whole requests only, so
    slow models that answer in bursts (a batch of 32 every few seconds) are measured without bias."""
    warmup = duration / 3 if warmup is None else warmup
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    return runner(_run(host, port, requests, callers, duration, warmup))


def paired_latencies(host: str, port: int, request: HttpRequest, n: int,
                     between: Callable[[], float]) -> list[tuple[float, float]]:
    """One caller on one connection: ``between()`` (returns milliseconds of other work, e.g. the model
    alone), then one request, ``n`` times; returns (request ms, ``between`` ms) pairs taken moments
    apart, so a change in the machine's load hits both alike."""

    async def pairs() -> list[tuple[float, float]]:
        reader, writer = await asyncio.open_connection(host, port)
        out = []
        try:
            for _ in range(n):
                other = between()
                sent = time.perf_counter()
                writer.write(request.data)
                status, body = await _read_answer(reader)
                if status != 200:
                    raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
                out.append(((time.perf_counter() - sent) * 1000, other))
        finally:
            writer.close()
        return out

    return asyncio.run(pairs())


def post_once(host: str, port: int, request: HttpRequest) -> tuple[int, bytes]:
    """Send one request and return (status, body): to check an answer before measuring."""

    async def once() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(request.data)
            return await _read_answer(reader)
        finally:
            writer.close()

    return asyncio.run(once())
