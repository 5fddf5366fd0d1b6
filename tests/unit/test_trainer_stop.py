"""Stopping and numbering: SIGINT/SIGTERM save a checkpoint and say how to resume; resuming a finished
run says so; steps count from 1 in metrics, grids, checkpoints and ``psr train``'s output."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from PIL import Image

from shared.cli import main as psr
from shared.config import load_config
from trainer.checkpoint import find_latest
from trainer.config import TrainConfig
from trainer.local_rewards import InProcessRewardClient
from trainer.run import RunFinished, TrainingInterrupted
from trainer.tiny import make_tiny_generator
from trainer.train import FlowGRPOTrainer

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml"
QUICK = ["sampling.group_size=2", "sampling.prompts_per_batch=1", "sampling.batches_per_step=1",
         "sampling.num_steps=2", "optim.train_batch_size=2", "run.save_every=100", "run.image_every=100"]


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    return make_tiny_generator(tmp_path_factory.mktemp("stop") / "generator")


class SignalAtStep:
    """A reward client that sends this process a signal while step ``at`` is being scored."""

    def __init__(self, sig: int, at: int):
        self.inner = InProcessRewardClient({"brightness": {"type": "brightness"}})
        self.sig, self.at, self.calls = sig, at, 0

    def submit(self, images, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), self.sig)
        return self.inner.submit(images, **kwargs)


def config(generator, out, *extra):
    return load_config(TrainConfig, CONFIG, [f"model.path={generator}", f"run.output_dir={out}", *QUICK, *extra])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_finishes_the_step_saves_and_resume_continues(generator, tmp_path, sig):
    before = signal.getsignal(sig)
    trainer = FlowGRPOTrainer(config(generator, tmp_path, "run.steps=4"), SignalAtStep(sig, at=2))
    with pytest.raises(TrainingInterrupted) as info:
        trainer.train(progress=False)
    assert info.value.step == 2 and info.value.signal_name == signal.Signals(sig).name
    assert info.value.checkpoint == find_latest(tmp_path) and find_latest(tmp_path).name == "step-000002"
    assert [h["step"] for h in trainer.history] == [1, 2]  # step 2 finished before stopping
    assert signal.getsignal(sig) is before  # handlers restored
    resumed = FlowGRPOTrainer(config(generator, tmp_path, "run.steps=4"), InProcessRewardClient(
        {"brightness": {"type": "brightness"}}))
    assert resumed.resume("latest") == 2
    assert resumed.train(progress=False)["steps"] == [3, 4]


def test_psr_train_prints_how_to_resume_or_extend(generator, tmp_path, capsys, monkeypatch):
    trainer = FlowGRPOTrainer(config(generator, tmp_path, "run.steps=1"),
                              InProcessRewardClient({"brightness": {"type": "brightness"}}))
    trainer.train(progress=False)
    with pytest.raises(RunFinished, match=r"1 of run\.steps = 1"):
        trainer.train(progress=False)
    args = ["train", "--config", str(CONFIG), "--set", f"model.path={generator}", "--set",
            f"run.output_dir={tmp_path}", "--set", "rewards.url=http://127.0.0.1:9", "--set", "run.steps=1",
            "--no-progress", "--resume"]
    for option in QUICK:
        args[-2:-2] = ["--set", option]
    assert psr(args) == 0
    out = capsys.readouterr().out
    assert "the run is finished: 1 of run.steps = 1 steps are done" in out
    assert "to train longer: psr train --config" in out and "--set run.steps=2 --resume" in out
    assert "run.steps=1" not in out.split("to train longer:")[1]
    # a new run (no --resume) into a folder holding a run is refused before the server is asked
    assert psr([*args[:-1], "--set", "rewards.ready_timeout_s=0"]) == 2
    err = capsys.readouterr().err
    assert f"run.output_dir {tmp_path} already holds a run (newest checkpoint step-000001)" in err
    assert "continue it with: psr train --config" in err and err.rstrip().endswith("--resume")

    def interrupted(*a, **k):
        raise TrainingInterrupted("SIGINT", 3, 8, tmp_path / "checkpoints" / "step-000003")

    monkeypatch.setattr("trainer.train.run_training", interrupted)
    assert psr(args[:-1]) == 130
    err = capsys.readouterr().err
    assert "SIGINT: stopped after step 3 of 8; checkpoint saved to" in err
    assert "resume with: psr train --config" in err and err.rstrip().endswith("--resume")

    def terminated(*a, **k):
        raise TrainingInterrupted("SIGTERM", 3, 8, tmp_path / "checkpoints" / "step-000003")

    monkeypatch.setattr("trainer.train.run_training", terminated)
    assert psr(args[:-1]) == 143  # 128 + SIGTERM, as a shell reports a process the signal ended
    assert "SIGTERM: stopped after step 3 of 8" in capsys.readouterr().err


def test_steps_are_numbered_from_one_everywhere(generator, tmp_path, capsys):
    from trainer.demo import print_training

    cfg = config(generator, tmp_path, "run.steps=2", "run.save_every=1", "run.image_every=1",
                 "run.keep_checkpoints=5")
    trainer = FlowGRPOTrainer(cfg, InProcessRewardClient({"brightness": {"type": "brightness"}}))
    summary = trainer.train(progress=False)
    assert summary["steps"] == [1, 2]
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step-000001.png", "step-000002.png"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000001", "step-000002"]
    assert Image.open(tmp_path / "samples" / "step-000002.png").size[0] > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("reward/total_mean")] == [1, 2]
    print_training(summary)  # the demo's table
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] == "step" and [line.split()[0] for line in lines[2:4]] == ["1", "2"]
