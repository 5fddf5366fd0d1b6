"""Shared fixtures: tiny random models written once per test session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from reward_server.config import ServerConfig
from reward_server.rewards import Reward
from shared.config import load_config


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``psr make-tiny`` output for the whole session; returns the path of its rewards.yaml."""
    from reward_server.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_server_config(tiny_config: Path) -> ServerConfig:
    """The parsed tiny rewards.yaml."""
    return load_config(ServerConfig, tiny_config)


@pytest.fixture(scope="session")
def load_tiny_reward(tiny_server_config: ServerConfig) -> Callable[[str], Reward]:
    """Factory: build and load a reward of the tiny config by name (each loaded once per session)."""
    from reward_server.registry import build_rewards, load_rewards

    cache: dict[str, Reward] = {}

    def load(name: str) -> Reward:
        if name not in cache:
            rewards = build_rewards(tiny_server_config, only=[name])
            load_rewards(rewards)
            cache[name] = rewards[name]
        return cache[name]

    return load
