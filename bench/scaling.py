"""Queue scaling and overhead, measured in one run against a local redis-server.

1. Throughput with 1, 2, 4, 8 worker processes on ``fixed_cost`` (a set time per batch, so the
   numbers measure the queue, not the CPU): samples/s and the ratio to the ideal N x the
   one-worker throughput.
2. Latency of one-sample requests to a trivial reward (``brightness``): p50/p90 through the
   queue (front service -> Redis -> worker process -> Redis -> front) vs. the embedded path
   (in-process dynamic batcher), both with ``max_wait_ms: 0``.

    python -m bench.scaling [--workers 1,2,4,8] [--batch-seconds 0.1] [--rounds 40] [--repeats 1] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from reward_server.config import ServerConfig
from reward_server.queue.backend import RedisBackend
from reward_server.registry import build_rewards, load_rewards
from reward_server.service import LocalBackend, ScoringService
from shared.config import load_config
from shared.images import encode_image
from shared.protocol import ScoreRequest
from tests.queue_helpers import RedisServer, WorkerProcess, wait_for, write_config

BATCH = 8


def _request(reward: str, n: int) -> ScoreRequest:
    image = encode_image(np.full((8, 8, 3), 90, np.uint8))
    return ScoreRequest.model_validate({"rewards": {reward: 1.0}, "samples": [{"image": image, "prompt": "p"}] * n})


def _service(config: ServerConfig, url: str | None) -> ScoringService:
    rewards = build_rewards(config)
    if url is None:
        load_rewards(rewards)
        return ScoringService(rewards, LocalBackend(rewards))
    return ScoringService(rewards, RedisBackend(url, rewards, config.queue, timeout_s=120))


async def _throughput(service: ScoringService, jobs: int) -> float:
    """Samples/s for ``jobs`` full-batch requests submitted at once."""
    request = _request("fc", BATCH)
    started = time.perf_counter()
    answers = await asyncio.gather(*(service.score(request) for _ in range(jobs)))
    elapsed = time.perf_counter() - started
    assert all(a.errors == [] for a in answers)
    return jobs * BATCH / elapsed


async def _latencies(service: ScoringService, n: int) -> list[float]:
    request = _request("bright", 1)
    for _ in range(10):  # warm-up
        await service.score(request)
    out = []
    for _ in range(n):
        started = time.perf_counter()
        await service.score(request)
        out.append(time.perf_counter() - started)
    return out


async def _with(service: ScoringService, fn, *args):
    start = getattr(service.backend, "start", None)
    if start:
        await start()
    try:
        return await fn(service, *args)
    finally:
        await service.backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--batch-seconds", type=float, default=0.1, help="fixed cost of one batch")
    parser.add_argument("--rounds", type=int, default=40, help="batches per worker in a throughput run")
    parser.add_argument("--requests", type=int, default=200, help="requests in the latency runs")
    parser.add_argument("--repeats", type=int, default=1, help="throughput runs per worker count (best is kept)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="psr-scaling-"))
    cfg = write_config(tmp / "rewards.yaml", {
        "fc": {"type": "fixed_cost", "max_batch_size": BATCH, "max_wait_ms": 0,
               "options": {"seconds_per_batch": args.batch_seconds}},
        "bright": {"type": "brightness", "max_batch_size": 32, "max_wait_ms": 0},
    }, queue={"visibility_timeout_s": 30, "heartbeat_interval_s": 1, "worker_ttl_s": 5})
    config = load_config(ServerConfig, cfg)
    redis = RedisServer(tmp)
    redis.start()
    client = redis.client()
    try:
        print(f"fixed_cost: {args.batch_seconds * 1000:.0f} ms per batch of {BATCH}; ideal per worker "
              f"{BATCH / args.batch_seconds:.0f} samples/s")
        if args.repeats > 1:
            print(f"(best of {args.repeats} runs per row)")
        print(f"{'workers':>8} {'samples/s':>10} {'x one worker':>13} {'ideal':>6} {'ratio':>6} {'of theory':>10}")
        base = None
        for n in [int(x) for x in args.workers.split(",")]:
            workers = [WorkerProcess(cfg, redis.url, tmp, "fc") for _ in range(n)]
            try:
                wait_for(lambda ws=workers: all(w.registered(client, "fc") for w in ws), 120, f"{n} workers")
                rate = max(asyncio.run(_with(_service(config, redis.url), _throughput, n * args.rounds))
                           for _ in range(args.repeats))
            finally:
                for w in workers:
                    w.stop()
            base = base or rate
            theory = n * BATCH / args.batch_seconds
            print(f"{n:>8} {rate:>10.1f} {rate / base:>13.2f} {n:>6} {rate / base / n:>6.2f} {rate / theory:>10.2f}")

        worker = WorkerProcess(cfg, redis.url, tmp, "bright")
        try:
            wait_for(lambda: worker.registered(client, "bright"), 60, "the latency worker")
            queue = asyncio.run(_with(_service(config, redis.url), _latencies, args.requests))
        finally:
            worker.stop()
        embedded = asyncio.run(_with(_service(config, None), _latencies, args.requests))
        p = lambda xs, q: float(np.percentile(xs, q)) * 1000  # noqa: E731
        print(f"latency of a 1-sample request to `brightness` ({args.requests} sequential requests):")
        print(f"  embedded  p50 {p(embedded, 50):6.2f} ms  p90 {p(embedded, 90):6.2f} ms")
        print(f"  queue     p50 {p(queue, 50):6.2f} ms  p90 {p(queue, 90):6.2f} ms")
        print(f"  queue overhead: {p(queue, 50) - p(embedded, 50):.2f} ms at p50, "
              f"{(statistics.mean(queue) - statistics.mean(embedded)) * 1000:.2f} ms on average")
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
