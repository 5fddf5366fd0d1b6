"""The deployment as users run it: `psr serve --redis` and `psr worker` processes, API key, metrics."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from reward_server.serving import free_port
from shared.client import RewardClient, RewardServiceError
from tests import queue_helpers
from tests.queue_helpers import wait_for, write_config
from tests.servers import repo_env, server_process

pytestmark = pytest.mark.slow

redis_server = queue_helpers.redis_server  # fixtures
start_worker = queue_helpers.start_worker

KEY = "k" * 32


def test_front_and_worker_processes_score_with_a_key_and_expose_metrics(tmp_path, redis_server, start_worker):
    cfg = write_config(tmp_path / "rewards.yaml", {
        "bright": {"type": "brightness"},
        "fc": {"type": "fixed_cost", "max_batch_size": 4},
    })
    metrics_port = free_port()
    worker = start_worker(cfg, redis_server.url, extra=["--metrics-port", str(metrics_port)])
    wait_for(lambda: worker.registered(redis_server.client(), "fc"), 60, "the worker to register")
    images = [np.full((6, 6, 3), v, np.uint8) for v in (0, 51, 255)]
    with server_process(cfg, "--redis", redis_server.url, env=repo_env(PSR_API_KEYS=f"trainer:{KEY}")) as url:
        ready = httpx.get(f"{url}/readyz").json()
        assert ready["ready"] is True and ready["workers"] == {"bright": 1, "fc": 1}
        with RewardClient(url, api_key=KEY) as client:
            res = client.score(images, {"bright": 1.0, "fc": 1.0}, prompts=["a", "bb", "ccc"])
        np.testing.assert_allclose(res.scores["bright"], [0.0, 0.2, 1.0])
        np.testing.assert_allclose(res.scores["fc"], [0.1, 0.2, 0.3])
        with RewardClient(url, max_retries=0) as anonymous, pytest.raises(RewardServiceError) as err:
            anonymous.score(images, {"bright": 1.0})
        assert err.value.status == 401
        front_metrics = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {KEY}"}).text
        assert 'psr_queue_live_workers{reward="fc"} 1.0' in front_metrics
    worker_metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    assert 'psr_worker_jobs_total{outcome="ok",reward="fc"} 1.0' in worker_metrics
    assert "psr_queue_job_latency_seconds_count" in worker_metrics
