"""Test helpers for the Redis queue: a real redis-server on a free loopback port, worker processes.

Use the fixtures in a test module with ``redis_server = queue_helpers.redis_server``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import yaml

from reward_server.config import ServerConfig
from reward_server.queue.backend import RedisBackend
from reward_server.queue.worker import Worker, connect_sync
from reward_server.registry import build_rewards, load_rewards
from reward_server.service import ScoringService
from reward_server.serving import free_port
from shared.config import load_config
from shared.images import encode_image
from shared.protocol import ScoreRequest
from shared.queue import messages as q
from tests.servers import REPO, require_binary, wait_for

REDIS_BIN = shutil.which("redis-server") or "/usr/bin/redis-server"

# Short timings so fault tests finish in seconds (validated like any config).
# Margins (8 heartbeats per TTL/visibility timeout) keep a loaded CI machine from looking like dead workers.
FAST_QUEUE = {
    "visibility_timeout_s": 2.0,
    "heartbeat_interval_s": 0.25,
    "worker_ttl_s": 2.0,
    "max_attempts": 2,
    "outage_grace_s": 3.0,
}


class RedisServer:
    """A throw-away redis-server bound to loopback; can be stopped and started again (same port)."""

    def __init__(self, workdir: Path, persistent: bool = False, password: str | None = None):
        self.port = free_port()
        self.workdir = workdir
        self.persistent = persistent
        self.password = password
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [REDIS_BIN, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--dir", str(self.workdir), "--appendonly", "yes" if self.persistent else "no"]
        if self.password:
            args += ["--requirepass", self.password]
        with (self.workdir / f"redis-{self.port}.log").open("a") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.5)
        try:
            wait_for(lambda: self._ping(client), 10, "redis-server to answer PING")
        finally:
            client.close()

    @staticmethod
    def _ping(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """SIGKILL: a crash; SIGTERM: a clean shutdown (the append-only file is synced)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, socket_connect_timeout=1, socket_timeout=5)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    require_binary("redis-server")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def write_config(path: Path, rewards: dict[str, dict], queue: dict | None = None, **extra: Any) -> Path:
    path.write_text(yaml.safe_dump({"rewards": rewards, "queue": {**FAST_QUEUE, **(queue or {})}, **extra}))
    return path


class WorkerProcess:
    """``python -m shared.cli worker ...`` as a subprocess, logging to a file."""

    def __init__(self, config: Path, url: str, log_dir: Path, rewards: str = "", extra: list[str] | None = None):
        self.log_path = log_dir / f"worker-{time.monotonic_ns()}.log"
        args = [sys.executable, "-m", "shared.cli", "--log-level", "INFO", "worker", "--config", str(config),
                "--redis", url]
        if rewards:
            args += ["--rewards", rewards]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(args + (extra or []), cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def registered(self, client: redis.Redis, reward: str) -> bool:
        members = client.zrange(q.workers_key(reward), 0, -1)
        return any(f":{self.pid}:".encode() in m for m in members)

    def consumer(self, client: redis.Redis, reward: str) -> str | None:
        for m in client.zrange(q.workers_key(reward), 0, -1):
            if f":{self.pid}:".encode() in m:
                return m.decode()
        return None

    def held_jobs(self, client: redis.Redis, reward: str) -> int:
        name = self.consumer(client, reward)
        if name is None:
            return 0
        try:
            info = client.xpending_range(q.jobs_stream(reward), q.GROUP, "-", "+", 100, consumername=name)
        except redis.ResponseError:
            return 0
        return len(info)

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: ``start_worker(config, url, rewards="a,b")``; every worker is killed at teardown."""
    procs: list[WorkerProcess] = []

    def _start(config: Path, url: str, rewards: str = "", extra: list[str] | None = None) -> WorkerProcess:
        proc = WorkerProcess(config, url, tmp_path, rewards, extra)
        procs.append(proc)
        return proc

    yield _start
    for proc in procs:
        proc.stop()
        print(f"--- worker {proc.pid} (exit {proc.proc.returncode}):\n{proc.output()[-3000:]}")  # shown on failure


class Front:
    """A ``ScoringService`` on a ``RedisBackend``, driven from a private event loop in a thread.

    Tests call ``submit(request)`` (a concurrent future) and keep their own thread free for
    polling and for killing processes.
    """

    def __init__(self, config_path: Path, url: str, timeout_s: float = 30.0):
        config = load_config(ServerConfig, config_path)
        rewards = build_rewards(config)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.backend = RedisBackend(url, rewards, config.queue, timeout_s)
        self.service = ScoringService(rewards, self.backend)
        self.call(self.backend.start())

    def call(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, request: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(self.service.score(request), self.loop)

    def close(self) -> None:
        self.call(self.backend.close(), timeout=15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def score_request(prompts: list[str], rewards: dict[str, float], side: int = 8) -> Any:
    """A request with one small grey raw image per prompt."""
    image = encode_image(np.full((side, side, 3), 100, np.uint8))
    return ScoreRequest.model_validate({"rewards": rewards, "samples": [{"image": image, "prompt": p} for p in prompts]})


def fixed_cost_score(prompt: str) -> float:
    """What the ``fixed_cost`` reward gives a prompt (its documented rule)."""
    return len(prompt) % 10 / 10.0


def stored_results(client: redis.Redis) -> list[q.JobResult]:
    return [q.JobResult.decode(client.get(k)) for k in client.scan_iter(match=q.result_key("*"))]


class ThreadWorker:
    """A real ``Worker`` on threads of the test process (faster to start than a subprocess)."""

    def __init__(self, config_path: Path, url: str, only: list[str] | None = None):
        config = load_config(ServerConfig, config_path)
        rewards = build_rewards(config, only)
        load_rewards(rewards)
        self.client = connect_sync(url)
        self.worker = Worker(self.client, rewards, config.queue, config.limits.image_limits(),
                             max_pixels_in_flight=config.limits.max_pixels_in_flight)
        self.thread = threading.Thread(target=self.worker.run, daemon=True)

    def __enter__(self) -> ThreadWorker:
        self.thread.start()
        names = [c.name for c in self.worker.consumers]
        wait_for(lambda: all(self.client.zscore(q.workers_key(n), self.worker.worker_id) for n in names), 10,
                 "the thread worker to register")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.worker.request_stop()
        self.thread.join(15)
        self.client.close()
