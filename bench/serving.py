"""Serving overhead and dynamic batching, measured in one run.

0. service / model, in process: a 16-image request through ``ScoringService`` (decode, dynamic
   batcher, model thread, answer assembly) vs. the reward's ``score`` on its model thread.
1. served / bare: images per second of a reward called directly (``reward.score`` in batches)
   vs. the same reward behind ``psr serve`` over HTTP (msgpack, raw uint8), with several
   concurrent clients.
2. batching gain: many concurrent single-image callers against a reward with a fixed cost per
   model call, with ``max_batch_size`` 32 vs 1.
3. regrouping: 8 closed-loop single-image callers against a reward whose model call costs 50 ms
   whatever the batch size (a GPU below saturation), ``max_wait_ms`` 10 vs 0 (no regroup wait:
   the callers split into two half batches for good).

    python -m bench.serving [--reward dino_i] [--images 256] [--clients 8] [--threads 1]

Both sides get the same torch thread count (``--threads``): on a small CPU machine, where the
clients share the cores, more model threads than cores make the served figure measure thread
oversubscription rather than serving overhead.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import yaml

from reward_server.config import ServerConfig
from reward_server.models.quiet import quiet_model_libraries
from reward_server.registry import build_rewards, load_rewards
from shared.client import RewardClient
from shared.config import load_config
from shared.protocol import Sample, Subject
from tests.servers import repo_env, server_process

OVERHEAD_GOAL_MS = 0.3  # in-process service overhead per request (issue 12)


def make_samples(n: int, size: int, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    return [
        Sample(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), "a dog on a sofa", (Subject("dog", ref),))
        for _ in range(n)
    ]


def bare_throughput(config: ServerConfig, name: str, samples: list[Sample]) -> float:
    reward = build_rewards(config, only=[name])[name]
    load_rewards({name: reward})
    batch = reward.spec.max_batch_size
    reward.score(samples[:batch])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(samples), batch):
        reward.score(samples[i : i + batch])
    return len(samples) / (time.perf_counter() - start)


def service_overhead(config: ServerConfig, name: str, samples: list[Sample], rounds: int = 100) -> tuple[float, float]:
    """Median milliseconds per request: the model alone on its thread, and the whole in-process service."""
    import asyncio

    from reward_server.service import LocalBackend, ScoringService
    from shared.client import build_requests
    from shared.protocol import ScoreRequest

    rewards = build_rewards(config, only=[name])
    request = ScoreRequest.model_validate(build_requests(
        [s.image for s in samples], {name: 1.0}, prompts=[s.prompt for s in samples],
        subjects=[[(x.category, x.reference) for x in s.subjects] for s in samples],
    )[0])

    async def run() -> tuple[float, float]:
        backend = LocalBackend(rewards)
        await backend.load()
        service, batcher = ScoringService(rewards, backend), backend.batchers[name]
        try:
            for _ in range(5):
                await service.score(request)
            model, served = [], []
            for _ in range(rounds):  # alternate, so a change in the machine's load hits both alike
                start = time.perf_counter()
                await batcher.run_on_model_thread(rewards[name].score, samples)
                model.append(time.perf_counter() - start)
                start = time.perf_counter()
                await service.score(request)
                served.append(time.perf_counter() - start)
            return statistics.median(model) * 1000, statistics.median(served) * 1000
        finally:
            await backend.close()

    return asyncio.run(run())


def served_throughput(url: str, name: str, samples: list[Sample], clients: int, per_request: int) -> float:
    chunks = [samples[i : i + per_request] for i in range(0, len(samples), per_request)]
    with RewardClient(url, image_format="raw") as client:

        def send(chunk: list[Sample]) -> None:
            client.score(
                [s.image for s in chunk], {name: 1.0}, prompts=[s.prompt for s in chunk],
                subjects=[[(x.category, x.reference) for x in s.subjects] for s in chunk],
            )

        send(chunks[0])  # warm-up
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(send, chunks))
        return len(samples) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="rewards.yaml (default: psr make-tiny into a temp dir)")
    parser.add_argument("--reward", default="dino_i")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--per-request", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the model, bare and served")
    args = parser.parse_args()
    quiet_model_libraries()
    torch.set_num_threads(args.threads)
    server_env = repo_env(OMP_NUM_THREADS=str(args.threads))
    with tempfile.TemporaryDirectory() as tmp:
        if args.config:
            config_path = Path(args.config)
        else:
            from reward_server.tiny import make_tiny

            config_path = make_tiny(Path(tmp) / "tiny")
        config = load_config(ServerConfig, config_path)
        samples = make_samples(args.images, args.size)

        model_ms, service_ms = service_overhead(config, args.reward, samples[: args.per_request])
        print(f"[0] {args.reward}, {args.per_request} images/request in process: model {model_ms:.2f} ms, "
              f"service {service_ms:.2f} ms -> overhead {service_ms - model_ms:.2f} ms, "
              f"service / model = {service_ms / model_ms:.2f}")
        overhead = service_ms - model_ms
        print(f"    goal of issue 12, overhead <= {OVERHEAD_GOAL_MS} ms: {'met' if overhead <= OVERHEAD_GOAL_MS else 'MISSED'}")
        bare = bare_throughput(config, args.reward, samples)
        with server_process(config_path, "--rewards", args.reward, env=server_env) as url:
            served = served_throughput(url, args.reward, samples, args.clients, args.per_request)
        print(f"[1] {args.reward}: bare {bare:.1f} img/s, served {served:.1f} img/s "
              f"({args.clients} clients x {args.per_request} images/request)")
        print(f"    served / bare = {served / bare:.3f}")

        def fixed_cost_callers(seconds: float, max_batch: int, wait_ms: float, images: int, clients: int) -> float:
            """Images/s of ``clients`` closed-loop single-image callers against a fixed cost per model call."""
            cfg = Path(tmp) / f"cost-{seconds}-{max_batch}-{wait_ms}.yaml"
            cfg.write_text(yaml.safe_dump({"rewards": {"cost": {
                "type": "fixed_cost", "max_batch_size": max_batch, "max_wait_ms": wait_ms,
                "options": {"seconds_per_batch": seconds}}}}))
            with server_process(cfg) as url:
                return served_throughput(url, "cost", make_samples(images, 16), clients=clients, per_request=1)

        results = {b: fixed_cost_callers(0.01, b, 5, images=128, clients=32) for b in (1, 32)}
        print(f"[2] fixed 10 ms per model call, 32 concurrent single-image callers: "
              f"max_batch_size=1 {results[1]:.1f} img/s, =32 {results[32]:.1f} img/s")
        print(f"    batching gain = {results[32] / results[1]:.2f}x")

        regroup = {w: fixed_cost_callers(0.05, 32, w, images=192, clients=8) for w in (0, 10)}
        print(f"[3] fixed 50 ms per model call, 8 closed-loop single-image callers: "
              f"max_wait_ms=0 {regroup[0]:.1f} img/s, =10 {regroup[10]:.1f} img/s")
        print(f"    regroup gain = {regroup[10] / regroup[0]:.2f}x")


if __name__ == "__main__":
    main()
