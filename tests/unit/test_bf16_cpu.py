"""Every dtype path in bf16, on the CPU, against fp32: rewards, batched preprocessing, a trainer update.

bf16 keeps 8 bits of mantissa (relative error ~2^-9 per rounding). Dtype bugs (a float32 tensor
into a bf16 module, a processor's float output) show up here as crashes; precision bugs as
differences past these tolerances, each about 10x what this test measured on the tiny models
(x86 with AVX512-BF16; CPUs without it emulate bf16 and land closer to fp32):

* preprocessing: each value within 2^-8 of its magnitude (one bf16 rounding);
* clip_t 0.02 (measured 2.3e-3: its logit scale multiplies the cosine), aesthetic 2e-3 (1.1e-4),
  DINO-I 2e-3 (1.0e-4), HPSv2 5e-3 (3.9e-4), HPSv3 mu 0.05 (4.8e-3), judge 1e-3 (1.8e-5: the tiny
  judge's digit distribution is nearly flat), subject consistency with given boxes (the embedder
  path) 2e-3 (1.4e-4);
* subject consistency with the tiny random detectors 0.1 (measured 6e-3): a box whose confidence
  sits at a threshold may be kept in one dtype and dropped in the other;
* structure: a bf16 reward holds bf16 weights, and HPSv3's head stays float32 and reads float32
  hidden states as the authors run it (a bf16 head moved mu by 2e-3, inside the tolerance,
  so it is checked directly);
* trainer: the LoRA gradient of one update in bf16 points the same way as in fp32 (cosine > 0.99,
  norms within 5 %), LoRA weights stay fp32 and the frozen transformer is bf16.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from reward_server.config import ServerConfig
from reward_server.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess, preprocess_batch
from reward_server.registry import build_rewards, load_rewards
from shared.config import load_config
from shared.protocol import Sample
from tests.reward_contract import make_sample

# reward -> (atol, rtol). pickscore and clip_i share clip_t's / aesthetic's CLIP code paths.
TOLERANCE = {
    "clip_t": (0.02, 0), "aesthetic": (2e-3, 0), "dino_i": (2e-3, 0), "hpsv2": (5e-3, 0),
    "hpsv3": (0.05, 0), "judge": (1e-3, 0), "subject_fixed": (2e-3, 0),
    "subject": (0.1, 0), "subject_owl": (0.1, 0),
}
HEAVY = {"hpsv3", "judge", "subject", "subject_owl"}  # one sample: bf16 matmuls are slow on CPUs


def _modules(obj, depth: int = 3) -> list[torch.nn.Module]:
    """The torch modules a reward holds (attributes, two levels down)."""
    if isinstance(obj, torch.nn.Module):
        return [obj]
    if depth == 0 or not hasattr(obj, "__dict__"):
        return []
    return [m for value in vars(obj).values() for m in _modules(value, depth - 1)]


def _load(config_path: Path, name: str, dtype: str, extra: list[str] = ()):
    overrides = [f"rewards.{name}.dtype={dtype}", f"rewards.{name}.device=cpu", *extra]
    rewards = build_rewards(load_config(ServerConfig, config_path, overrides), [name])
    load_rewards(rewards)
    return rewards[name]


def _samples(name: str) -> list[Sample]:
    rng = np.random.default_rng(7)
    samples = [make_sample(rng, i, (48, 48)) for i in range(1 if name in HEAVY else 2)]
    if name == "subject_fixed":
        boxes = {s.category: [[4, 4, 30, 30]] for sample in samples for s in sample.subjects}
        samples = [Sample(image=s.image, prompt=s.prompt, subjects=s.subjects, metadata={"boxes": boxes}) for s in samples]
    return samples


@pytest.fixture(scope="module")
def load_bf16(tiny_config):
    """Factory: a tiny reward loaded in bf16 on the CPU, once per module."""
    cache = {}

    def load(name: str, extra: tuple[str, ...] = ()):
        if (name, extra) not in cache:
            cache[name, extra] = _load(tiny_config, name, "bfloat16", extra)
        return cache[name, extra]

    return load


@pytest.mark.parametrize("name", sorted(TOLERANCE))
def test_reward_in_bf16_matches_fp32(tiny_config, load_tiny_reward, load_bf16, name):
    if name == "subject_fixed":  # the embedder path alone: boxes come with the request
        extra = ("rewards.subject.options.detector={kind: fixed}",)
        fp32, bf16 = _load(tiny_config, "subject", "float32", extra), load_bf16("subject", extra)
    else:
        fp32, bf16 = load_tiny_reward(name), load_bf16(name)
        assert fp32.spec.dtype in ("auto", "float32") and not torch.cuda.is_available()  # auto = fp32 on CPU
    dtypes = {p.dtype for m in _modules(bf16) for p in m.parameters()}
    if _modules(fp32):
        assert torch.bfloat16 in dtypes, f"{name}: no bf16 weights, dtype was ignored ({dtypes})"
    samples = _samples(name)
    a, b = fp32.score(samples), bf16.score(samples)
    assert [r.error for r in a] == [r.error for r in b]
    a = np.array([np.nan if r.score is None else r.score for r in a])
    b = np.array([np.nan if r.score is None else r.score for r in b])
    atol, rtol = TOLERANCE[name]
    np.testing.assert_allclose(b, a, atol=atol, rtol=rtol, equal_nan=True)


def test_hpsv3_head_stays_float32_in_a_bf16_model(load_bf16):
    """As hpsv3==1.0.0 runs it: bf16 backbone, float32 ranknet head fed float32 hidden states."""
    reward = load_bf16("hpsv3")
    assert {p.dtype for p in reward.model.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in reward.model.head.parameters()} == {torch.float32}
    seen = []
    handle = reward.model.head.register_forward_pre_hook(lambda _module, args: seen.append(args[0].dtype))
    try:
        reward.score(_samples("hpsv3"))
    finally:
        handle.remove()
    assert seen == [torch.float32]


def test_batched_preprocessing_in_bf16_is_one_rounding_of_fp32():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size, dtype=np.uint8) for size in ((40, 60, 3), (64, 64, 3), (40, 60, 3), (17, 90, 3))]
    spec = Preprocess(resize=36, crop=32, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    fp32 = preprocess_batch(images, spec, torch.device("cpu"), torch.float32)
    bf16 = preprocess_batch(images, spec, torch.device("cpu"), torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and bf16.shape == fp32.shape == (4, 3, 32, 32)
    err = (bf16.float() - fp32).abs()
    assert bool((err <= fp32.abs() * 2.0**-8 + 1e-6).all()), float(err.max())


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state; a bf16 run beside fp32 ones needs it reset around it."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def _trainer(tiny: Path, out: Path, mixed: str):
    from accelerate.state import AcceleratorState

    from trainer.config import TINY_CONFIG, TrainConfig
    from trainer.local_rewards import InProcessRewardClient
    from trainer.train import FlowGRPOTrainer

    AcceleratorState._reset_state(True)
    cfg = load_config(TrainConfig, TINY_CONFIG, [
        f"model.path={tiny}", f"run.output_dir={out}", f"model.mixed_precision='{mixed}'",
        "sampling.group_size=4", "sampling.prompts_per_batch=1", "sampling.batches_per_step=1",
        "sampling.num_steps=2", "grpo.train_timesteps=[1]", "lora.rank=4", "optim.train_batch_size=4",
        "optim.max_grad_norm=1.0e9", "data.prompts=[{prompt: a red apple, references: ['solid:250,0,0']}]",
    ])
    trainer = FlowGRPOTrainer(cfg, InProcessRewardClient({"brightness": {"type": "brightness"}}))
    with torch.no_grad():  # the same non-identity LoRA in both runs
        for p in trainer.policy.params:
            p.copy_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return trainer


def _lora_gradient(trainer, rollouts) -> torch.Tensor:
    from trainer.update import optimise

    policy, grads = trainer.policy, []
    real_step = policy.optimizer.step

    def record(*args, **kwargs):
        grads.extend(p.grad.detach().float().flatten() for p in policy.params)
        return real_step(*args, **kwargs)

    policy.optimizer.step = record
    values, mask = np.array([1.0, -1.0, 0.5, -0.5]), np.ones(4, bool)
    try:
        stats = optimise(policy, rollouts, lambda i: (values, mask), trainer.cfg, step=0)
    finally:
        policy.optimizer.step = real_step
    assert np.isfinite(stats["train/loss"])
    return torch.cat(grads)


def test_trainer_update_in_bf16_matches_fp32(tmp_path, fresh_accelerate_state):
    from trainer.monitor import StepTimer
    from trainer.tiny import make_tiny_generator

    tiny = make_tiny_generator(tmp_path / "generator")
    fp32 = _trainer(tiny, tmp_path / "fp32", "no")
    rollouts = fp32.collect(0, StepTimer()).rollouts  # the same samples for both updates
    g32 = _lora_gradient(fp32, rollouts)
    bf16 = _trainer(tiny, tmp_path / "bf16", "bf16")
    assert all(p.dtype == torch.float32 for p in bf16.policy.params)
    frozen = {p.dtype for p in bf16.policy.transformer.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}
    bf16.collect(0, StepTimer())  # sampling runs in bf16 too (a dtype mismatch would raise here)
    g16 = _lora_gradient(bf16, rollouts)
    cosine = float(torch.nn.functional.cosine_similarity(g32, g16, dim=0))
    assert cosine > 0.99 and abs(float(g16.norm() / g32.norm()) - 1) < 0.05, (cosine, float(g16.norm() / g32.norm()))
