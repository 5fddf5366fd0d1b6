"""The reward-function shapes other projects use, against a real server on a thread."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from reward_server.app import create_app
from reward_server.config import ServerConfig
from reward_server.serving import BackgroundServer
from shared.adapters import make_reward_fn, make_trl_reward
from shared.client import AsyncRewardClient, RewardClient


@pytest.fixture(scope="module")
def url():
    config = ServerConfig.model_validate({"rewards": {
        "brightness": {"type": "brightness"},
        "cost": {"type": "fixed_cost", "options": {"error_on": "bad"}},
    }})
    with BackgroundServer(create_app(config)) as url:
        yield url


def test_reward_fn_shape_like_diffusion_rl_codebases(url):
    images = torch.stack([torch.full((3, 8, 8), 0.5), torch.ones(3, 8, 8)])  # (N, 3, H, W) in [0, 1]
    with RewardClient(url) as client:
        reward_fn = make_reward_fn(client, {"brightness": 1.0, "cost": 0.5})
        scores, info = reward_fn(images, ["ab", "bad"], [{"subjects": [], "tag": 1}, {}])
    assert scores["brightness"] == pytest.approx([128 / 255, 1.0])
    assert scores["total"][0] == pytest.approx(128 / 255 + 0.5 * 0.2) and np.isnan(scores["total"][1])
    assert info["errors"][0]["sample"] == 1 and set(info["versions"]) == {"brightness", "cost"}


def test_trl_reward_function_scores_completions_against_dataset_images(url):
    with RewardClient(url) as client:
        reward = make_trl_reward(client, reward="cost", image_column="image")
        images = [np.zeros((4, 4, 3), np.uint8)] * 3
        completions = ["abc", [{"role": "assistant", "content": "abcd"}], "bad"]
        out = reward(prompts=["p"] * 3, completions=completions, image=images)
        assert reward.__name__ == "psr_cost"
        assert out == [pytest.approx(0.3), pytest.approx(0.4), None]
        with pytest.raises(KeyError, match="no 'image' column"):
            reward(prompts=["p"], completions=["x"], picture=images[:1])


def test_async_client_matches_sync_client(url):
    images = [np.full((4, 4, 3), v, np.uint8) for v in (10, 200, 90)]

    async def run():
        async with AsyncRewardClient(url, batch_size=2) as client:
            return await client.score(images, {"brightness": 1.0})

    async_res = asyncio.run(run())
    with RewardClient(url) as client:
        sync_res = client.score(images, {"brightness": 1.0})
    assert np.allclose(async_res.total, sync_res.total)
    assert async_res.versions == sync_res.versions
