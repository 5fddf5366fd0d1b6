"""SFT: the timestep sampler and loss against diffusers' training utilities, exact resume, logging,
and clear errors for data SFT cannot use."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

from shared.cli import main as psr
from shared.config import ConfigError, load_config
from trainer.checkpoint import find_latest, lora_state_dict
from trainer.config import TrainConfig
from trainer.evaluation.synthetic import make_synthetic_dataset
from trainer.flow_matching import flow_matching_loss, loss_weighting, noised, sample_sigmas
from trainer.pipeline import shift_sigmas
from trainer.sft import SFTTrainer
from trainer.tiny import make_tiny_generator

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny_sft_cpu.yaml"
FLUX = {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
        "max_image_seq_len": 4096}


def diffusers_sigmas(scheduler, scheme: str, n: int, seed: int) -> torch.Tensor:
    """What diffusers' FLUX/SD3 DreamBooth scripts draw (train_dreambooth_lora_flux_kontext.py)."""
    u = compute_density_for_timestep_sampling(scheme, n, logit_mean=0.3, logit_std=1.2, mode_scale=1.29,
                                              generator=torch.Generator().manual_seed(seed))
    indices = (u * scheduler.config.num_train_timesteps).long()
    return scheduler.sigmas[indices]


@pytest.mark.parametrize("scheme", ["logit_normal", "mode", "none", "cosmap"])
def test_timestep_sampler_matches_diffusers(scheme):
    kw = {"logit_mean": 0.3, "logit_std": 1.2, "mode_scale": 1.29}
    # FLUX's scheduler (dynamic shifting): diffusers' scripts train on its unshifted sigmas
    flux = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, **FLUX)
    ours = sample_sigmas(4096, scheme, torch.Generator().manual_seed(7), 1000, None, **kw)
    torch.testing.assert_close(ours, diffusers_sigmas(flux, scheme, 4096, 7).float(), rtol=0, atol=1e-6)
    # SD3's scheduler (static shift 3): the scheduler's own shifted sigmas, which our "auto" shift reproduces
    sd3 = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    ours = sample_sigmas(4096, scheme, torch.Generator().manual_seed(7), 1000,
                         lambda s: shift_sigmas(s, 1024, sd3.config), **kw)
    torch.testing.assert_close(ours, diffusers_sigmas(sd3, scheme, 4096, 7).float(), rtol=1e-5, atol=1e-6)


def test_resolution_shift_and_loss_weighting():
    base = sample_sigmas(2000, "logit_normal", torch.Generator().manual_seed(0))
    shifted = sample_sigmas(2000, "logit_normal", torch.Generator().manual_seed(0), 1000,
                            lambda s: shift_sigmas(s, 1024, FLUX))
    mu = 0.5 + (1024 - 256) * (1.15 - 0.5) / (4096 - 256)  # FLUX at 512 px (1024 tokens)
    expected = np.exp(mu) / (np.exp(mu) + (1 / base.double().numpy() - 1))
    np.testing.assert_allclose(shifted.numpy(), expected, rtol=1e-6)
    assert shifted.mean() > base.mean()  # a shift towards noise, as FLUX samples at this size
    for scheme in ("sigma_sqrt", "cosmap", "logit_normal", "none"):
        torch.testing.assert_close(loss_weighting(scheme, shifted), compute_loss_weighting_for_sd3(scheme, shifted))


def test_flow_matching_loss_is_the_weighted_velocity_error():
    g = torch.Generator().manual_seed(0)
    x0, noise, v = (torch.randn(3, 5, 8, generator=g) for _ in range(3))
    sigmas, weights = torch.tensor([0.2, 0.5, 0.9]), torch.tensor([1.0, 2.0, 0.5])
    x_t = noised(x0, noise, sigmas)
    torch.testing.assert_close(x_t[1], 0.5 * x0[1] + 0.5 * noise[1])
    per_sample = [weights[i] * ((v[i] - (noise[i] - x0[i])) ** 2).mean() for i in range(3)]
    torch.testing.assert_close(flow_matching_loss(v, x0, noise, weights), torch.stack(per_sample))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    return make_tiny_generator(root / "generator"), make_synthetic_dataset(root / "data", 1, 32).parent


def sft_config(setup, out, *extra):
    generator, data = setup
    return load_config(TrainConfig, CONFIG, [f"model.path={generator}", f"data.file={data}", f"run.output_dir={out}",
                                             "optim.ema=true", "optim.lr_scheduler=linear", "optim.warmup_steps=1",
                                             "optim.gradient_accumulation_steps=2", "optim.train_batch_size=2",
                                             "run.steps=3", "run.save_every=1", "sft.validation_items=2", *extra])


def test_sft_resume_is_exact(setup, tmp_path):
    straight = SFTTrainer(sft_config(setup, tmp_path / "a"))
    full = straight.train(progress=False)
    first = SFTTrainer(sft_config(setup, tmp_path / "b"))
    first.train(progress=False, stop_after=2)
    resumed = SFTTrainer(sft_config(setup, tmp_path / "b"))
    assert resumed.resume("latest") == 2
    tail = resumed.train(progress=False)
    assert tail["steps"] == [3] and tail["loss"][0] == pytest.approx(full["loss"][2], rel=1e-6)
    a, b = lora_state_dict(straight.policy.transformer), lora_state_dict(resumed.policy.transformer)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)
    for s, r in zip(straight.policy.ema.shadow, resumed.policy.ema.shadow, strict=True):
        torch.testing.assert_close(s, r, rtol=1e-6, atol=1e-7)


def test_sft_logs_loss_per_noise_bucket_and_a_validation_grid(setup, tmp_path):
    trainer = SFTTrainer(sft_config(setup, tmp_path, "run.steps=2", "run.image_every=1", "sft.loss_buckets=2"))
    summary = trainer.train(progress=False)
    assert summary["steps"] == [1, 2] and summary["headline"] == "loss"
    metrics = trainer.history[0]
    buckets = [k for k in metrics if k.startswith("train/loss_sigma_")]
    assert buckets and set(buckets) <= {"train/loss_sigma_0.00-0.50", "train/loss_sigma_0.50-1.00"}
    assert np.isfinite(metrics["val/pixel_mse"]) and np.isfinite(metrics["train/grad_norm"])
    grids = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert grids == ["step-000000.png", "step-000001.png", "step-000002.png"]  # step 0: before training
    assert find_latest(tmp_path).name == "step-000002"


def test_data_sft_cannot_use_is_refused_with_the_item_named(setup, tmp_path, capsys):
    generator, data = setup
    items = json.loads((data / "dataset.json").read_text())
    del items[3]["target_path"]
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("refs", "targets"):
        (bad / name).symlink_to(data / name)
    (bad / "dataset.json").write_text(json.dumps(items))
    args = ["train", "--config", str(CONFIG), "--set", f"model.path={generator}", "--set", f"data.file={bad}"]
    assert psr(args) != 0
    err = capsys.readouterr().err
    assert "item 3: target_path: missing (supervised training needs the target image)" in err
    assert "Traceback" not in err
    with pytest.raises(ConfigError, match="algorithm sft trains on dataset targets"):
        load_config(TrainConfig, CONFIG, ["model.path=x", "data.prompts=[{prompt: a dog}]"])
    with pytest.raises(ConfigError, match="reference counts 0-4"):
        load_config(TrainConfig, CONFIG, ["model.path=x", "data.reference_mix={5: 1.0}"])
