"""Optional parts of the update: KL to the reference (LoRA off), true CFG, gradient checkpointing, EMA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from shared.config import load_config
from trainer.config import TrainConfig
from trainer.local_rewards import InProcessRewardClient
from trainer.tiny import make_tiny_generator
from trainer.train import FlowGRPOTrainer

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml"


def test_kl_cfg_checkpointing_and_ema(tmp_path):
    tiny = make_tiny_generator(tmp_path / "generator")
    cfg = load_config(
        TrainConfig,
        CONFIG,
        [
            f"model.path={tiny}",
            f"run.output_dir={tmp_path / 'run'}",
            "run.steps=2",
            "sampling.group_size=4",
            "sampling.prompts_per_batch=1",
            "sampling.batches_per_step=1",
            "sampling.num_steps=3",
            "sampling.cfg_scale=2.0",
            "sampling.negative_prompt=blurry",
            "grpo.beta=0.5",
            "grpo.timestep_fraction=0.5",
            "optim.train_batch_size=2",
            "model.gradient_checkpointing=true",
            "optim.ema=true",
            "optim.ema_decay=0.5",
            "data.prompts=[{prompt: a red apple, references: ['solid:250,0,0']}]",
        ],
    )
    assert cfg.train_step_indices() == [0, 1]
    trainer = FlowGRPOTrainer(cfg, InProcessRewardClient({"brightness": {"type": "brightness"}}))
    assert trainer.policy.gen.transformer.is_gradient_checkpointing
    trainer.train(progress=False)
    first, second = trainer.history
    # LoRA starts as the identity (B = 0), so the first micro-batch has KL 0; later ones have moved
    assert first["train/kl"] >= 0 and second["train/kl"] > 0
    assert np.isfinite(second["train/loss"])
    # the reference really is the model without LoRA: switching adapters off changes the output
    gen, model = trainer.policy.gen, trainer.policy.transformer
    cond = gen.condition(["a red apple"], [[np.full((32, 32, 3), 250, np.uint8)]], 32, 32)
    x = gen.initial_noise(1, 32, 32, torch.Generator().manual_seed(0))
    with torch.no_grad():
        v_policy = gen.velocity(model, x, torch.tensor(0.5), cond)
        with trainer.policy.reference() as ref:
            v_ref = gen.velocity(ref, x, torch.tensor(0.5), cond)
        assert not torch.allclose(v_policy, v_ref)
        torch.testing.assert_close(
            gen.velocity(model, x, torch.tensor(0.5), cond), v_policy
        )  # adapters back on
    ema = trainer.policy.ema
    assert any(not torch.allclose(s, p.detach()) for s, p in zip(ema.shadow, ema.params, strict=True))
