"""A client started next to its server (`psr serve ... & psr train ...`) waits for the rewards it
needs: through connection refusals while the server starts and 'still loading' answers."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from reward_server.app import create_app
from reward_server.config import ServerConfig
from reward_server.serving import BackgroundServer, free_port
from shared.client import RewardClient, RewardServiceError

REPO = Path(__file__).resolve().parents[2]


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


def test_psr_train_says_when_the_rewards_never_load(tiny_config, tmp_path, capsys):
    """A server that answers but never loads its rewards: one line after rewards.ready_timeout_s."""
    from shared.cli import main

    config = ServerConfig.model_validate({"rewards": {"brightness": {"type": "brightness"}}})
    with BackgroundServer(create_app(config, load_models=False)) as url:
        code = main(["train", "--config", str(REPO / "configs" / "tiny_cpu.yaml"), "--no-progress",
                     "--set", f"model.path={tiny_config.parent / 'generator'}", "--set", f"rewards.url={url}",
                     "--set", f"run.output_dir={tmp_path / 'run'}", "--set", "rewards.ready_timeout_s=1"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert f"rewards ['brightness'] of the reward service at {url} were not ready within 1 s" in err
