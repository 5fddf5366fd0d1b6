"""A client started next to its server (`psr serve ... & psr train ...`) waits for the rewards it
needs: through connection refusals while the server starts and 'still loading' answers."""

from __future__ import annotations

import threading
import time

import pytest

from reward_server.app import create_app
from reward_server.config import ServerConfig
from reward_server.serving import BackgroundServer, free_port
from shared.client import RewardClient, RewardServiceError


def test_waits_through_a_starting_server_and_names_missing_rewards():
    port = free_port()
    config = ServerConfig.model_validate({"rewards": {"bright": {"type": "brightness"}}})
    server = BackgroundServer(create_app(config), port=port)
    starter = threading.Timer(0.6, server.start)  # nothing listens for the first 0.6 s
    starter.start()
    try:
        with RewardClient(f"http://127.0.0.1:{port}", max_retries=0) as client:
            began = time.monotonic()
            client.wait_until_ready(30, rewards=["bright"])
            assert time.monotonic() - began >= 0.5
            with pytest.raises(RewardServiceError, match=r"does not host \['brigth'\]; it hosts \['bright'\]"):
                client.wait_until_ready(5, rewards=["brigth"])
    finally:
        starter.join()
        server.stop()


def test_gives_up_at_the_deadline_with_the_reason():
    with RewardClient(f"http://127.0.0.1:{free_port()}", max_retries=0) as client, pytest.raises(
            RewardServiceError, match=r"cannot reach the reward service at .* \(waited 0.5 s\)"):
        client.wait_until_ready(0.5)
