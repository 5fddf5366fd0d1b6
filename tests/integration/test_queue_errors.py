"""Queue errors say what is actually wrong: Redis unreachable, a reward no worker registered
(a misspelt name), or no live worker -- through the client's queue transport and the front."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from reward_server.app import create_app
from reward_server.config import ServerConfig
from reward_server.front import install_front
from reward_server.queue.backend import RedisBackend
from reward_server.registry import build_rewards
from reward_server.serving import BackgroundServer, free_port
from shared.client import RewardClient, RewardServiceError
from shared.config import load_config
from shared.protocol import MSGPACK, pack
from tests import queue_helpers
from tests.queue_helpers import FAST_QUEUE, ThreadWorker, write_config

redis_server = queue_helpers.redis_server
IMAGE = np.full((4, 4, 3), 90, np.uint8)


def test_client_says_redis_is_unreachable_not_that_no_worker_runs():
    port = free_port()
    with RewardClient(f"redis://127.0.0.1:{port}/0", max_retries=0, timeout=5) as client:
        with pytest.raises(RewardServiceError) as err:
            client.score([IMAGE], {"bright": 1.0})
        assert f"Redis at 127.0.0.1:{port}/0 is unreachable" in str(err.value) and "worker" not in str(err.value)
        with pytest.raises(RewardServiceError, match="is unreachable"):
            client.rewards()


@pytest.mark.redis
def test_client_names_a_misspelt_reward_and_the_registered_ones(redis_server, tmp_path):
    config = write_config(tmp_path / "rewards.yaml", {"bright": {"type": "brightness"}}, queue=FAST_QUEUE)
    with ThreadWorker(config, redis_server.url), RewardClient(redis_server.url, max_retries=0, timeout=10) as client:
        with pytest.raises(RewardServiceError) as err:
            client.score([IMAGE], {"brigth": 1.0})
        assert err.value.status == 422
        assert "no worker has registered rewards ['brigth']" in str(err.value) and "registered: bright" in str(err.value)
        assert client.score([IMAGE], {"bright": 1.0}).total[0] == pytest.approx(90 / 255)


@pytest.mark.redis
def test_front_with_redis_down_says_so_in_readyz_and_503s(redis_server, tmp_path):
    redis_server.stop()  # the front starts while its Redis is down
    config_path = write_config(tmp_path / "rewards.yaml", {"bright": {"type": "brightness"}}, queue=FAST_QUEUE)
    config = load_config(ServerConfig, config_path)
    rewards = build_rewards(config)
    backend = RedisBackend(redis_server.url, rewards, config.queue, 5.0)
    app = create_app(config, rewards=rewards, backend=backend, load_models=False)
    install_front(app, api_keys={})
    where = f"127.0.0.1:{redis_server.port}/0"
    with BackgroundServer(app) as url:
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 503 and f"Redis at {where} is unreachable" in ready.json()["error"]
        body = pack({"rewards": {"bright": 1.0}, "samples": [{"image": {"format": "raw", "shape": [4, 4, 3],
                                                                          "data": IMAGE.tobytes()}}]})
        answer = httpx.post(f"{url}/v1/score", content=body, headers={"content-type": MSGPACK}, timeout=10)
        assert answer.status_code == 503 and f"Redis at {where} is unreachable" in answer.json()["detail"]
        assert "still loading" not in answer.json()["detail"]
