"""End to end over real HTTP: a `psr serve` process and `psr train` processes; 2 steps, checkpoint, resume."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.servers import REPO, psr_command, repo_env, server_process, write_config
from trainer.tiny import make_tiny_generator

pytestmark = pytest.mark.slow
CONFIG = REPO / "configs" / "tiny_cpu.yaml"


def train(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(psr_command("train", "--config", str(CONFIG), "--no-progress", *args), cwd=REPO,
                          env=repo_env(), capture_output=True, text=True, timeout=timeout)


def test_train_two_steps_then_resume(tmp_path: Path):
    tiny = make_tiny_generator(tmp_path / "generator")
    server_cfg = write_config(tmp_path / "rewards.yaml", {"brightness": {"type": "brightness"}})
    out = tmp_path / "run"
    common = [f"--set=model.path={tiny}", f"--set=run.output_dir={out}", "--set=run.save_every=1",
              "--set=sampling.group_size=4", "--set=sampling.batches_per_step=2"]
    with server_process(server_cfg) as url:
        first = train(*common, f"--set=rewards.url={url}", "--set=run.steps=2")
        assert first.returncode == 0, first.stderr[-3000:]
        assert re.search(r"step 1: reward 0\.\d+", first.stdout) and re.search(r"step 2: reward 0\.\d+", first.stdout)
        ckpt = out / "checkpoints" / "step-000002"
        assert (ckpt / "lora.safetensors").stat().st_size > 0 and (ckpt / "trainer_state.pt").is_file()
        assert list((out / "tensorboard").glob("events.out.tfevents.*"))
        assert list((out / "samples").glob("step-*.png"))

        resumed = train(*common, f"--set=rewards.url={url}", "--set=run.steps=3", "--resume")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "step 3: reward" in resumed.stdout and "step 1:" not in resumed.stdout
        assert (out / "checkpoints" / "step-000003" / "lora.safetensors").is_file()

        # a reward the server does not host is a clear error, not a hang or a crash trace
        bad = train(*common, f"--set=rewards.url={url}", "--set=rewards.reward_weights={nope: 1.0}",
                    "--set=rewards.required=[]", "--set=run.steps=1", f"--set=run.output_dir={tmp_path / 'bad'}")
        assert bad.returncode != 0
        assert "refused the request (4" in bad.stderr and "nope" in bad.stderr
        assert "Traceback" not in bad.stderr
