"""End to end over real HTTP: a `psr serve` process and `psr train` processes; 2 steps, checkpoint, resume
(on two data-parallel processes)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import REPO, psr_command, repo_env, server_process, write_config
from trainer.tiny import make_tiny_generator

pytestmark = pytest.mark.slow
CONFIG = REPO / "configs" / "tiny_cpu.yaml"


def train(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        psr_command("train", "--config", str(CONFIG), "--no-progress", *args),
        cwd=REPO,
        env=repo_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_train_two_steps_then_resume(tmp_path: Path):
    tiny = make_tiny_generator(tmp_path / "generator")
    server_cfg = write_config(tmp_path / "rewards.yaml", {"brightness": {"type": "brightness"}})
    out = tmp_path / "run"
    common = [
        f"--set=model.path={tiny}",
        f"--set=run.output_dir={out}",
        "--set=run.save_every=1",
        "--set=sampling.group_size=4",
        "--set=sampling.batches_per_step=2",
    ]
    with server_process(server_cfg) as url:
        first = train(*common, f"--set=rewards.url={url}", "--set=run.steps=2")
        assert first.returncode == 0, first.stderr[-3000:]
        assert re.search(r"step 1: reward 0\.\d+", first.stdout) and re.search(
            r"step 2: reward 0\.\d+", first.stdout
        )
        ckpt = out / "checkpoints" / "step-000002"
        assert (ckpt / "lora.safetensors").stat().st_size > 0 and (ckpt / "trainer_state.pt").is_file()
        assert list((out / "tensorboard").glob("events.out.tfevents.*"))
        assert list((out / "samples").glob("step-*.png"))

        # resumed on two data-parallel processes (torchrun, gloo on the CPU): the multi-GPU code path
        resumed = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node=2",
                "-m",
                "shared.cli",
                "train",
                "--config",
                str(CONFIG),
                "--no-progress",
                *common,
                f"--set=rewards.url={url}",
                "--set=run.steps=3",
                "--resume",
            ],
            cwd=REPO,
            env=repo_env(),
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert resumed.stdout.count("step 3: reward") == 1 and "step 1:" not in resumed.stdout, resumed.stdout
        assert (out / "checkpoints" / "step-000003" / "lora.safetensors").is_file()
