"""Overlap: batch k is scored while batch k+1 is sampled, and the update waits only for what it needs."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import pytest

from shared.config import load_config
from trainer.config import TrainConfig
from trainer.local_rewards import InProcessRewardClient
from trainer.monitor import StepTimer
from trainer.tiny import make_tiny_generator
from trainer.train import FlowGRPOTrainer

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml"


class LazyFuture(Future):
    """A Future whose result is computed when first asked for; records when that happens."""

    def __init__(self, fn, events, name):
        super().__init__()
        self._fn, self._events, self._name = fn, events, name

    def result(self, timeout=None):
        if not self.done():
            self._events.append(f"wait {self._name}")
            self.set_result(self._fn())
        return super().result(timeout)


class RecordingClient:
    def __init__(self, inner, events):
        self.inner, self.events, self.n = inner, events, 0

    def submit(self, images, **kwargs):
        self.n += 1
        self.events.append(f"submit {self.n}")
        return LazyFuture(lambda: self.inner.score(images, **kwargs), self.events, self.n)


def recorded_trainer(tmp_path, batches: int, *overrides: str) -> tuple[FlowGRPOTrainer, list[str]]:
    """A one-step trainer on the tiny generator whose reward client records submits and waits."""
    tiny = make_tiny_generator(tmp_path / "generator")
    events: list[str] = []
    client = RecordingClient(InProcessRewardClient({"brightness": {"type": "brightness"}}), events)
    cfg = load_config(
        TrainConfig,
        CONFIG,
        [
            f"model.path={tiny}",
            f"run.output_dir={tmp_path / 'run'}",
            "run.steps=1",
            "sampling.group_size=4",
            "sampling.prompts_per_batch=1",
            f"sampling.batches_per_step={batches}",
            "sampling.num_steps=2",
            "optim.train_batch_size=4",
            "data.prompts=[{prompt: a red apple}]",
            *overrides,
        ],
    )
    return FlowGRPOTrainer(cfg, client), events


def test_update_trains_on_early_batches_before_waiting_for_the_last(tmp_path):
    trainer, events = recorded_trainer(tmp_path, 3)
    step_fn = trainer.policy.optimizer.step

    def recording_step(*args, **kwargs):
        events.append("optimizer step")
        return step_fn(*args, **kwargs)

    trainer.policy.optimizer.step = recording_step
    trainer.train(progress=False)
    # all three batches are submitted before any result is needed, then each is awaited just before its update
    assert events == [
        "submit 1",
        "submit 2",
        "submit 3",
        "wait 1",
        "optimizer step",
        "wait 2",
        "optimizer step",
        "wait 3",
        "optimizer step",
    ], events


def test_scale_rewards_batch_needs_every_reward_first(tmp_path):
    trainer, events = recorded_trainer(tmp_path, 2, "grpo.scale_rewards=batch")
    trainer.train(progress=False)
    assert events == ["submit 1", "submit 2", "wait 1", "wait 2"], events


def test_nested_phases_add_up_to_wall_time():
    import time

    timer = StepTimer()
    start = time.perf_counter()
    with timer.phase("update"):
        sum(range(200_000))
        with timer.phase("reward_wait"):
            sum(range(200_000))
    wall = time.perf_counter() - start
    m = timer.metrics()
    assert m["time/update_s"] > 0 and m["time/reward_wait_s"] > 0
    total = m["time/update_s"] + m["time/reward_wait_s"]
    assert total <= wall and total == pytest.approx(wall, abs=0.05)
    assert m["time/update_fraction"] + m["time/reward_wait_fraction"] == pytest.approx(1.0)


class FailingFuture(Future):
    def __init__(self, exc):
        super().__init__()
        self.set_exception(exc)


class ServiceError(RuntimeError):
    def __init__(self, message, status):
        super().__init__(message)
        self.status = status


def _step_scores(required):
    import numpy as np

    from trainer.rollout import Rollout
    from trainer.scoring import StepScores

    cfg = load_config(TrainConfig, CONFIG, ["model.path=/x", f"rewards.required={required}"])
    rollout = Rollout(
        cond=None,
        negative=None,
        trajectory=None,
        group_ids=np.zeros(2, int),
        images=[np.zeros((4, 4, 3), np.uint8)] * 2,
        items=[],
    )
    return lambda exc: StepScores([rollout], [FailingFuture(exc)], cfg, StepTimer())


def test_refused_request_stops_and_transient_failure_masks_or_stops():
    from trainer.grpo import RequiredRewardFailed
    from trainer.scoring import RewardRequestRefused

    make = _step_scores("[]")
    with pytest.raises(RewardRequestRefused, match=r"refused the request \(422\).*unknown rewards"):
        make(ServiceError("unknown rewards ['nope']", 422)).advantages_of(0)
    masked = make(ServiceError("server overloaded", 503))
    _, mask = masked.advantages_of(0)
    assert not mask.any()
    with pytest.raises(RewardRequestRefused, match="every scoring request"):
        masked.full()
    with pytest.raises(RequiredRewardFailed, match="server overloaded"):
        _step_scores("[brightness]")(ServiceError("server overloaded", 503)).advantages_of(0)


def test_step_wide_advantages_of_each_batch_use_the_whole_step():
    """normalize_then_sum's last normalisation spans the step's every sampling batch (trl's batch), so
    a batch's advantages wait for all rewards; they are trl's rule over the step, not over one batch."""
    from types import SimpleNamespace

    import numpy as np

    from tests.unit.test_trainer_grpo import trl_normalize_then_sum
    from trainer.rollout import Rollout
    from trainer.scoring import StepScores

    cfg = load_config(TrainConfig, CONFIG, ["model.path=/x", "rewards.reward_weights={a: 0.6, b: 0.4}",
                                            "rewards.required=[]", "grpo.multi_objective_aggregation=normalize_then_sum"])
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 12), rng.normal(5, 3, 12)  # 2 batches x 2 groups x 3 samples
    rollouts, futures = [], []
    for r in range(2):
        part = slice(6 * r, 6 * r + 6)
        rollouts.append(Rollout(None, None, None, np.repeat([2 * r, 2 * r + 1], 3),
                                [np.zeros((4, 4, 3), np.uint8)] * 6, []))
        futures.append(Future())
        futures[-1].set_result(SimpleNamespace(scores={"a": a[part], "b": b[part]}, errors=[]))
    scores = StepScores(rollouts, futures, cfg, StepTimer())
    got = np.concatenate([scores.advantages_of(0)[0], scores.advantages_of(1)[0]])
    expected = trl_normalize_then_sum(np.stack([a, b], 1), np.array([0.6, 0.4]), 3, ddof=0)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
