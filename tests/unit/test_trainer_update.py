"""The update's loss normalisation: masked samples (failed rewards, dropped groups) weigh nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shared.config import load_config
from trainer.config import TrainConfig
from trainer.local_rewards import InProcessRewardClient
from trainer.monitor import StepTimer
from trainer.tiny import make_tiny_generator
from trainer.train import FlowGRPOTrainer
from trainer.update import optimise

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml"


def _config(tiny, out, batch: int, accum: int) -> TrainConfig:
    return load_config(
        TrainConfig,
        CONFIG,
        [
            f"model.path={tiny}",
            f"run.output_dir={out}",
            "sampling.group_size=4",
            "sampling.prompts_per_batch=1",
            "sampling.batches_per_step=1",
            "sampling.num_steps=2",
            "grpo.train_timesteps=[1]",
            "lora.rank=4",
            "optim.max_grad_norm=1.0e9",
            f"optim.train_batch_size={batch}",
            f"optim.gradient_accumulation_steps={accum}",
            "data.prompts=[{prompt: a red apple, references: ['solid:250,0,0']}]",
        ],
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("update")
    tiny = make_tiny_generator(root / "generator")
    one = _config(tiny, root / "run", batch=4, accum=1)  # one micro-batch per optimizer step
    two = _config(tiny, root / "run", batch=2, accum=2)  # two micro-batches per optimizer step
    trainer = FlowGRPOTrainer(one, InProcessRewardClient({"brightness": {"type": "brightness"}}))
    with torch.no_grad():  # a LoRA that is not the identity, so every parameter gets a gradient
        for p in trainer.policy.params:
            p.add_(0.05 * torch.randn_like(p, generator=torch.Generator().manual_seed(p.numel())))
    rollouts = trainer.collect(0, StepTimer()).rollouts
    return trainer, rollouts, one, two


def _gradient(trainer, rollouts, cfg, values, mask) -> tuple[list[torch.Tensor], dict[str, float]]:
    """Gradients the optimizer step sees (the parameters are restored afterwards) and the diagnostics."""
    policy = trainer.policy
    start = [p.detach().clone() for p in policy.params]
    grads: list[torch.Tensor] = []
    real_step = policy.optimizer.step

    def record(*args, **kwargs):
        grads.extend(p.grad.detach().clone() for p in policy.params)
        return real_step(*args, **kwargs)

    policy.optimizer.step = record
    try:
        stats = optimise(policy, rollouts, lambda i: (values, mask), cfg, step=0)
    finally:
        policy.optimizer.step = real_step
        with torch.no_grad():
            for p, s in zip(policy.params, start, strict=True):
                p.copy_(s)
    return grads, stats


def test_masked_samples_do_not_change_the_weight_of_the_others(setup):
    """Split into two micro-batches, 3 valid samples are 2 + 1: each must still weigh 1/3, as in one batch."""
    trainer, rollouts, one, two = setup
    values = np.array([1.0, -0.5, 0.7, 2.0])
    mask = np.array([True, True, True, False])
    whole, _ = _gradient(trainer, rollouts, one, values, mask)
    split, stats = _gradient(trainer, rollouts, two, values, mask)
    assert len(whole) == len(split) > 0
    assert any(g.abs().max() > 0 for g in whole)
    for a, b in zip(whole, split, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    # on-policy first step: the ratio averaged over the trained samples is 1
    assert stats["train/ratio_mean"] == pytest.approx(1.0, abs=1e-4)


def test_a_fully_masked_micro_batch_adds_nothing(setup):
    trainer, rollouts, _, two = setup
    values = np.array([1.0, -0.5, 0.7, 2.0])
    none, stats = _gradient(trainer, rollouts, two, values, np.zeros(4, dtype=bool))
    assert all(g.abs().max() == 0 for g in none)
    assert "train/ratio_mean" not in stats  # no trained sample: no made-up diagnostics
