"""Training configs: strict, cross-checked, and the shipped YAML files load."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import ConfigError, load_config
from trainer.config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_shipped_configs_load():
    tiny = load_config(TrainConfig, CONFIGS / "tiny_cpu.yaml", ["model.path=/x", "rewards.url=http://h:1"])
    assert tiny.model.path == "/x" and tiny.rewards.url == "http://h:1"
    paper = load_config(TrainConfig, CONFIGS / "psr_flux_kontext.yaml")
    assert paper.sampling.group_size == 6 and paper.sampling.num_steps == 28 and paper.model.resolution == 512
    assert paper.lora.rank == 64 and paper.optim.lr == 1e-5
    assert paper.rewards.reward_weights == {"subject": 0.4, "judge": 0.4, "hpsv3": 0.2}
    sft = load_config(TrainConfig, CONFIGS / "psr_sft_kontext.yaml")
    assert sft.algorithm == "sft" and sft.rewards is None
    assert (sft.lora.rank, sft.optim.lr, sft.model.resolution) == (512, 1e-4, 512)
    assert sft.data.reference_mix == {2: 0.9, 3: 0.05, 4: 0.05}
    tiny_sft = load_config(TrainConfig, CONFIGS / "tiny_sft_cpu.yaml", ["model.path=/x", "data.file=/d"])
    assert tiny_sft.algorithm == "sft" and tiny_sft.model.resolution == 32


def test_paper_beta_is_flow_grpos_beta_in_our_kl_units():
    """flow_grpo's KL is ours times |dt| (trainer.grpo.gaussian_kl): its beta 0.04 is ours 0.04 * mean |dt|."""
    import numpy as np

    paper = load_config(TrainConfig, CONFIGS / "psr_flux_kontext.yaml")
    s = paper.sampling.num_steps
    base = np.linspace(1.0, 1.0 / s, s)
    mu = 0.5 + (1024 - 256) * (1.15 - 0.5) / (4096 - 256)  # FLUX.1's shift at 512 px (1024 tokens)
    sigmas = np.append(np.exp(mu) / (np.exp(mu) + 1 / base - 1), 0.0)
    dt = np.abs(np.diff(sigmas))[paper.train_step_indices()]
    assert paper.grpo.beta == pytest.approx(0.04 * dt.mean(), rel=0.01)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("grpo.unknown_knob=1", r"--set grpo.unknown_knob: unknown key; valid keys here: .*scale_rewards"),
        ("rewards.required=[nope]", "not in reward_weights"),
        ("sampling.group_size=1", "min_valid_per_group"),
        ("model.resolution=40", "multiples of 16"),
        ("grpo.scale_rewards=prompt", "scale_rewards"),
        ("grpo.train_timesteps=[0,9]", "outside"),
        ("grpo.multi_objective_aggregation=normalize_then_sum", "leave grpo.scale_rewards at 'group'"),
        ("rewards=null", "algorithm grpo needs a rewards section"),
    ],
)
def test_bad_values_are_refused_with_a_reason(override, message):
    extra = ["grpo.scale_rewards=none"] if "normalize_then_sum" in override else []
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, CONFIGS / "tiny_cpu.yaml", ["model.path=/x", override, *extra])


def test_train_step_indices():
    cfg = load_config(
        TrainConfig,
        CONFIGS / "tiny_cpu.yaml",
        ["model.path=/x", "sampling.num_steps=10", "grpo.timestep_fraction=0.5"],
    )
    assert cfg.train_step_indices() == [0, 2, 4, 6, 8]
    cfg = load_config(
        TrainConfig, CONFIGS / "tiny_cpu.yaml", ["model.path=/x", "grpo.train_timesteps=[3,1,1]"]
    )
    assert cfg.train_step_indices() == [1, 3]


def test_tiny_run_config_for_the_demo(tmp_path):
    from trainer.config import tiny_run_config

    cfg = tiny_run_config("/gen", "http://127.0.0.1:9", tmp_path, ["run.steps=3"])
    assert (cfg.model.path, cfg.rewards.url, cfg.run.steps) == ("/gen", "http://127.0.0.1:9", 3)
    assert cfg.run.output_dir == str(tmp_path)
