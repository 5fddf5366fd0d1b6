"""SFT learns: on a small fixed set the flow-matching loss falls well below its start, and the images the
model generates move toward their targets by the project's DINO similarity (``ImageEmbedder``),
against a control with updates disabled (the same model before training: its LoRA is the identity)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from reward_server.models.embedders import ImageEmbedder
from reward_server.tiny.vision import write_dino
from shared.config import load_config
from trainer.config import TrainConfig
from trainer.dataset import load_image
from trainer.evaluation.synthetic import make_synthetic_dataset
from trainer.sft import SFTTrainer
from trainer.tiny import make_tiny_generator

pytestmark = pytest.mark.slow
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny_sft_cpu.yaml"
STEPS = 80


def fixed_set_loss(trainer: SFTTrainer) -> float:
    """Mean loss over every item at 4 fixed (noise, noise level) draws each."""
    with torch.no_grad():
        return float(np.mean([trainer.loss([item], torch.Generator().manual_seed(1000 + k))[0].item()
                              for k in range(4) for item in trainer.items]))


def test_sft_loss_falls_and_images_move_toward_their_targets(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", 1, 32).parent  # 7 items: 2, 3 and 4 references
    torch.manual_seed(0)
    write_dino(tmp_path / "dino", initializer_range=0.2)  # random features that respond to content
    cfg = load_config(TrainConfig, CONFIG, [
        f"model.path={make_tiny_generator(tmp_path / 'generator')}", f"data.file={data}",
        f"run.output_dir={tmp_path / 'run'}", f"run.steps={STEPS}", f"run.save_every={STEPS}",
        f"run.image_every={STEPS}", "sft.validation_items=0", "data.reference_mix=null",
        "optim.lr=3e-2", "optim.train_batch_size=7",
    ])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = SFTTrainer(cfg)
        loss_before, control = fixed_set_loss(trainer), trainer.generate(trainer.items)
        trainer.train(progress=False)
        loss_after, trained = fixed_set_loss(trainer), trainer.generate(trainer.items)
    finally:
        torch.set_num_threads(threads)
    embedder = ImageEmbedder(str(tmp_path / "dino"), "dino", torch.device("cpu"), torch.float32)
    targets = [load_image(trainer.root / item.target_path) for item in trainer.items]
    target_emb = embedder.embed(targets)
    sim_trained = (embedder.embed(trained) * target_emb).sum(-1).numpy()
    sim_control = (embedder.embed(control) * target_emb).sum(-1).numpy()
    mse = [np.mean([((a / 255 - b / 255) ** 2).mean() for a, b in zip(imgs, targets, strict=True)])
           for imgs in (control, trained)]
    report = (f"fixed-set loss {loss_before:.3f} -> {loss_after:.3f}; DINO to targets control "
              f"{sim_control.mean():.3f} trained {sim_trained.mean():.3f} (per item {np.round(sim_trained - sim_control, 3)});"
              f" pixel MSE control {mse[0]:.4f} trained {mse[1]:.4f}")
    print(report)
    assert loss_after < 0.6 * loss_before, report
    assert sim_trained.mean() > sim_control.mean() + 0.05, report
    assert (sim_trained > sim_control).sum() >= 5, report
    assert mse[1] < 0.8 * mse[0], report
