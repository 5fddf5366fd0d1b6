"""Checkpoints: a run stopped after step k and resumed gives the same next step as an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shared.config import load_config
from trainer.checkpoint import find_latest, lora_state_dict
from trainer.config import TrainConfig
from trainer.grpo import RequiredRewardFailed
from trainer.local_rewards import InProcessRewardClient
from trainer.tiny import make_tiny_generator
from trainer.train import FlowGRPOTrainer

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml"


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return make_tiny_generator(tmp_path_factory.mktemp("tiny") / "generator")


@pytest.fixture(scope="module")
def client():
    return InProcessRewardClient(
        {
            "brightness": {"type": "brightness"},
            "flaky": {"type": "fixed_cost", "options": {"error_on": "teapot"}},
        }
    )


def small_config(tiny_path, out, *extra):
    return load_config(
        TrainConfig,
        CONFIG,
        [
            f"model.path={tiny_path}",
            f"run.output_dir={out}",
            "sampling.group_size=4",
            "sampling.prompts_per_batch=1",
            "sampling.batches_per_step=2",
            "sampling.num_steps=3",
            "run.steps=3",
            "run.save_every=1",
            "optim.lr_scheduler=linear",
            "optim.warmup_steps=1",
            "optim.train_batch_size=2",
            "optim.gradient_accumulation_steps=2",
            "optim.ema=true",
            *extra,
        ],
    )


def test_resume_continues_exactly(tiny_path, client, tmp_path):
    straight = FlowGRPOTrainer(small_config(tiny_path, tmp_path / "a"), client)
    full = straight.train(progress=False)

    first = FlowGRPOTrainer(small_config(tiny_path, tmp_path / "b"), client)
    first.train(progress=False, stop_after=2)
    assert find_latest(tmp_path / "b").name == "step-000002"
    del first
    resumed = FlowGRPOTrainer(small_config(tiny_path, tmp_path / "b"), client)
    assert resumed.resume("latest") == 2
    tail = resumed.train(progress=False)

    assert tail["steps"] == [3]  # steps count from 1: the third step ran after resuming from step-000002
    assert tail["loss"][0] == pytest.approx(full["loss"][2], rel=1e-6, abs=1e-9)
    assert tail["reward_mean"][0] == pytest.approx(full["reward_mean"][2], rel=1e-9)
    a, b = lora_state_dict(straight.policy.transformer), lora_state_dict(resumed.policy.transformer)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)
    # the LoRA weights did move away from their initial values during training
    init = FlowGRPOTrainer(small_config(tiny_path, tmp_path / "c"), client)
    assert any(not torch.allclose(a[k], v) for k, v in lora_state_dict(init.policy.transformer).items())
    ckpt = find_latest(tmp_path / "a")
    assert {p.name for p in ckpt.iterdir()} >= {"lora.safetensors", "ema.safetensors", "trainer_state.pt"}

    # a run started from a LoRA (model.init_lora, e.g. the SFT result) resumes exactly too
    init = [f"model.init_lora={ckpt}", "run.steps=2"]
    straight = FlowGRPOTrainer(small_config(tiny_path, tmp_path / "d", *init), client)
    full = straight.train(progress=False)
    FlowGRPOTrainer(small_config(tiny_path, tmp_path / "e", *init), client).train(progress=False, stop_after=1)
    resumed = FlowGRPOTrainer(small_config(tiny_path, tmp_path / "e", *init), client)
    assert resumed.resume("latest") == 1
    assert resumed.train(progress=False)["loss"][0] == pytest.approx(full["loss"][1], rel=1e-6, abs=1e-9)
    a, b = lora_state_dict(straight.policy.transformer), lora_state_dict(resumed.policy.transformer)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)


def test_failed_rewards_are_masked_unless_required(tiny_path, client, tmp_path):
    # the teapot prompt's samples fail on "flaky": masked, training goes on
    cfg = small_config(
        tiny_path,
        tmp_path / "m",
        "run.steps=1",
        "rewards.reward_weights={brightness: 1.0, flaky: 0.1}",
        "rewards.required=[brightness]",
        "sampling.prompts_per_batch=3",
        "sampling.batches_per_step=1",
    )
    trainer = FlowGRPOTrainer(cfg, client)
    trainer.train(progress=False)
    metrics = trainer.history[0]
    assert metrics["samples/failed"] == 4 and metrics["groups/dropped"] == 1
    assert np.isfinite(metrics["train/loss"])
    # the same failure on a required reward stops the run and says why
    cfg = cfg.model_copy(update={"rewards": cfg.rewards.model_copy(update={"required": ["flaky"]})})
    with pytest.raises(RequiredRewardFailed, match=r"flaky.*teapot"):
        FlowGRPOTrainer(cfg, client).train(progress=False)
