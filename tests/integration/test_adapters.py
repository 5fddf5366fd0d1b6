"""The adapters inside other libraries' loops, called exactly as those libraries call them, against a
real server on a thread. flow_grpo's and ddpo-pytorch's calls are reproduced from their training
scripts (scripts/train_sd3.py, scripts/train.py); trl's GRPOTrainer runs for real."""

from __future__ import annotations

import asyncio
import logging
from concurrent import futures

import numpy as np
import pytest
import torch

from reward_server.app import create_app
from reward_server.config import ServerConfig
from reward_server.serving import BackgroundServer
from shared.adapters import RewardFailed, make_ddpo_reward_fn, make_reward_fn, make_trl_reward
from shared.client import AsyncRewardClient, RewardClient

PROMPTS = ["ab", "ab", "abc", "abc bad"]  # fixed_cost: len % 10 / 10, fails on "bad"
WEIGHTS = {"brightness": 1.0, "cost": 0.5}


@pytest.fixture(scope="module")
def url():
    config = ServerConfig.model_validate({"rewards": {
        "brightness": {"type": "brightness"},
        "cost": {"type": "fixed_cost", "options": {"error_on": "bad"}},
    }})
    with BackgroundServer(create_app(config)) as url:
        yield url


def _rollout_images() -> torch.Tensor:
    """What flow_grpo's and ddpo's pipelines return with output_type="pt": (N, 3, H, W) floats in [0, 1]."""
    levels = torch.tensor([0.2, 0.6, 0.4, 1.0])
    return levels[:, None, None, None].expand(4, 3, 8, 8).clone()


def _expected(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    bright = np.array([round(float(v) * 255) / 255 for v in images[:, 0, 0, 0]])
    cost = np.array([len(p) % 10 / 10 for p in PROMPTS])
    return bright, cost


def _flow_grpo_step(reward_fn, images, prompts, prompt_metadata):
    """flow_grpo scripts/train_sd3.py: submit, collect, tensorise, per-prompt advantages on rewards['avg']."""
    with futures.ThreadPoolExecutor(max_workers=8) as executor:
        rewards = executor.submit(reward_fn, images, prompts, prompt_metadata, only_strict=True)
        rewards, reward_metadata = rewards.result()
    rewards = {key: torch.as_tensor(value).float() for key, value in rewards.items()}
    avg = rewards["avg"].numpy()
    advantages = np.empty_like(avg, dtype=np.float64)  # flow_grpo.stat_tracking.PerPromptStatTracker.update
    prompts_arr = np.array(prompts)
    for prompt in np.unique(prompts_arr):
        group = avg[prompts_arr == prompt]
        advantages[prompts_arr == prompt] = (group - group.mean()) / (group.std() + 1e-4)
    eval_means = {k: np.mean(v.numpy()[v.numpy() != -10]) for k, v in rewards.items()}  # its eval() logging
    return rewards, reward_metadata, advantages, eval_means


def test_flow_grpo_loop_trains_on_avg_and_stops_on_a_failed_score(url):
    images = _rollout_images()
    metadata = [{"tag": "a"}, {}, {}, {}]  # flow_grpo passes the dataset's prompt metadata
    bright, cost = _expected(images)
    with RewardClient(url) as client:
        with pytest.raises(RewardFailed, match=r"1 of 4 samples have failed scores: sample 3: cost: .*'bad'"):
            _flow_grpo_step(make_reward_fn(client, WEIGHTS), images, PROMPTS, metadata)
        good = PROMPTS[:3]
        rewards, info, advantages, _ = _flow_grpo_step(make_reward_fn(client, WEIGHTS), images[:3], good, metadata[:3])
    assert set(rewards) == {"brightness", "cost", "avg"}
    np.testing.assert_allclose(rewards["avg"].numpy(), (bright + 0.5 * cost)[:3], atol=1e-6)
    assert np.isfinite(advantages).all() and info["failed"] == [] and set(info["versions"]) == set(WEIGHTS)


def test_flow_grpo_substitute_is_reported_and_keeps_the_group_finite(url, caplog):
    images = _rollout_images()
    bright, cost = _expected(images)
    with RewardClient(url) as client, caplog.at_level(logging.WARNING, logger="shared.adapters"):
        rewards, info, advantages, eval_means = _flow_grpo_step(
            make_reward_fn(client, WEIGHTS, on_failure=-10), images, PROMPTS, [{}] * 4)
    assert info["failed"] == [3] and info["errors"][0]["reward"] == "cost"
    assert "1 of 4 samples have failed scores, substituted -10" in caplog.text
    assert float(rewards["cost"][3]) == -10 and float(rewards["avg"][3]) == pytest.approx(bright[3] - 5, abs=1e-6)
    assert np.isfinite(advantages).all()
    assert eval_means["cost"] == pytest.approx(cost[:3].mean())  # flow_grpo's eval skips -10


def test_flow_grpo_nan_policy_shows_why_it_is_not_the_default(url):
    with RewardClient(url) as client:
        _, info, advantages, _ = _flow_grpo_step(make_reward_fn(client, WEIGHTS, on_failure="nan"),
                                                 _rollout_images(), PROMPTS, [{}] * 4)
    prompts = np.array(PROMPTS)
    assert np.isnan(advantages[prompts == "abc bad"]).all() and info["failed"] == [3]


def test_ddpo_loop_takes_the_first_value_as_a_tensor(url):
    images = _rollout_images()[:3]
    bright, cost = (v[:3] for v in _expected(_rollout_images()))
    with RewardClient(url) as client, futures.ThreadPoolExecutor(max_workers=2) as executor:
        reward_fn = make_ddpo_reward_fn(client, WEIGHTS)
        prompts, prompt_metadata = zip(*[(p, {}) for p in PROMPTS[:3]], strict=True)  # ddpo's prompt_fn output
        rewards = executor.submit(reward_fn, images, prompts, prompt_metadata)
        rewards, reward_metadata = rewards.result()
        samples_rewards = torch.as_tensor(rewards, device="cpu")  # scripts/train.py
        failing = make_ddpo_reward_fn(client, WEIGHTS)
        with pytest.raises(RewardFailed, match="sample 3: cost"):
            failing(_rollout_images(), PROMPTS, [{}] * 4)
    np.testing.assert_allclose(samples_rewards.numpy(), bright + 0.5 * cost, atol=1e-6)
    advantages = (samples_rewards - samples_rewards.mean()) / (samples_rewards.std() + 1e-8)
    assert torch.isfinite(advantages).all() and set(reward_metadata["scores"]) == set(WEIGHTS)


def test_adapter_arguments_are_checked():
    client = object()
    with pytest.raises(ValueError, match="'avg' would clash"):
        make_reward_fn(client, {"avg": 1.0})
    for bad in ("zero", float("nan"), True):
        with pytest.raises(ValueError, match="on_failure"):
            make_ddpo_reward_fn(client, {"a": 1.0}, on_failure=bad)


def test_trl_reward_reads_both_image_columns(url):
    images = [np.full((4, 4, 3), v, np.uint8) for v in (10, 200)]
    with RewardClient(url) as client:
        one = make_trl_reward(client, reward="brightness", image_column="image")
        many = make_trl_reward(client, reward="brightness", image_column="images")
        pick = make_trl_reward(client, reward="brightness", image_column="images", image_index=1)
        assert one(prompts=["p"] * 2, completions=["a", "b"], image=images) == pytest.approx([10 / 255, 200 / 255])
        assert many(prompts=["p"] * 2, completions=["a", "b"], images=[[im] for im in images]) == pytest.approx(
            [10 / 255, 200 / 255])
        assert pick(prompts=["p"], completions=["a"], images=[images]) == pytest.approx([200 / 255])
        with pytest.raises(ValueError, match=r"row 0 of column 'images' has 2 images; .*image_index"):
            many(prompts=["p"], completions=["a"], images=[images])
        with pytest.raises(KeyError, match=r"no 'image' column; columns: \['picture'\]"):
            one(prompts=["p"], completions=["x"], picture=images[:1], trainer_state=None)
        cost = make_trl_reward(client, reward="cost", image_column="image")
        out = cost(prompts=["p"] * 3, completions=["abc", [{"role": "assistant", "content": "abcd"}], "bad"],
                   image=images + images[:1])
        assert cost.__name__ == "psr_cost" and out == [pytest.approx(0.3), pytest.approx(0.4), None]


@pytest.mark.slow
def test_trl_grpo_trainer_with_an_images_column(url, tiny_config):
    """trl's GRPOTrainer (a tiny Qwen2.5-VL policy) calls the adapters with its `images` column."""
    from datasets import Dataset
    from PIL import Image
    from trl import GRPOConfig, GRPOTrainer

    levels = (10, 200)
    rows = [{"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe"}]}],
             "images": [Image.fromarray(np.full((28, 28, 3), v, np.uint8))]} for v in levels]
    seen: dict[str, list] = {}
    with RewardClient(url) as client:
        bright = make_trl_reward(client, reward="brightness", image_column="images")
        cost = make_trl_reward(client, reward="cost", image_column="images")

        def cost_logged(prompts, completions, **columns):
            out = cost(prompts, completions, **columns)
            seen.setdefault("pairs", []).extend(zip(completions, out, strict=True))
            return out

        cost_logged.__name__ = "psr_cost"
        args = GRPOConfig(output_dir=str(tiny_config.parent / "trl-run"), per_device_train_batch_size=4,
                          num_generations=2, max_completion_length=4, max_steps=1, logging_steps=1, report_to=[],
                          use_cpu=True, save_strategy="no", bf16=False, disable_tqdm=True, seed=0)
        trainer = GRPOTrainer(model=str(tiny_config.parent / "qwen2_5_vl"), reward_funcs=[bright, cost_logged],
                              args=args, train_dataset=Dataset.from_list(rows))
        trainer.train()
    logged = next(entry for entry in trainer.state.log_history if "rewards/psr_brightness/mean" in entry)
    assert float(logged["rewards/psr_brightness/mean"]) == pytest.approx(np.mean(levels) / 255, abs=1e-4)
    for completion, score in seen["pairs"]:  # aligned with the completions trl generated
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        text = text if isinstance(text, str) else " ".join(p.get("text", "") for p in text)
        assert score == (None if "bad" in text else pytest.approx(len(text) % 10 / 10))


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
