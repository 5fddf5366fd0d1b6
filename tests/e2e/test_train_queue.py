"""The trainer straight through the Redis queue: ``rewards.url=redis://...``, a real redis-server and
a real ``psr worker`` process, no HTTP front."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests import queue_helpers
from tests.e2e.test_train_http import train
from tests.queue_helpers import wait_for, write_config
from trainer.tiny import make_tiny_generator

pytestmark = pytest.mark.slow
redis_server = queue_helpers.redis_server
start_worker = queue_helpers.start_worker


def test_train_two_steps_through_the_queue(tmp_path: Path, redis_server, start_worker):
    generator = make_tiny_generator(tmp_path / "generator")
    config = write_config(tmp_path / "rewards.yaml", {"brightness": {"type": "brightness"}})
    worker = start_worker(config, redis_server.url)
    client = redis_server.client()
    wait_for(lambda: worker.registered(client, "brightness"), 60, "the worker to register")
    out = tmp_path / "run"
    result = train(
        f"--set=model.path={generator}",
        f"--set=run.output_dir={out}",
        f"--set=rewards.url={redis_server.url}",
        "--set=run.steps=2",
        "--set=sampling.group_size=4",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"step 2: reward 0\.\d+", result.stdout), result.stdout
    assert (out / "checkpoints" / "step-000002" / "lora.safetensors").is_file()
    jobs = queue_helpers.stored_results(client)
    assert jobs and all(r.reward == "brightness" for r in jobs)
