"""A real ``psr train`` process stopped by a real Ctrl-C (SIGINT): it finishes the step, saves and prints the
command that resumes, and that command, run as printed, continues from the checkpoint. (SIGTERM takes the
same path: tests/unit/test_trainer_stop.py.)"""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from shared.cli import main as psr
from tests.servers import REPO, psr_command, repo_env
from trainer.evaluation.synthetic import make_synthetic_dataset
from trainer.tiny import make_tiny_generator

pytestmark = pytest.mark.slow
CONFIG = REPO / "configs" / "tiny_sft_cpu.yaml"
STEPS = 100_000  # never reached: the signal ends the run


class Run:
    """``psr train`` in a subprocess whose stderr (the progress bar, the messages) is read as it comes."""

    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen(psr_command(*argv), env=repo_env(), cwd=REPO, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.chunks: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for chunk in iter(lambda: self.proc.stderr.read(1), ""):
            self.chunks.append(chunk)

    @property
    def err(self) -> str:
        return "".join(self.chunks)

    def wait_for_step(self, step: int, timeout: float = 120.0) -> None:
        """Until the progress bar shows ``step`` or a later one done (the run is inside its step loop)."""
        deadline = time.monotonic() + timeout
        while max(map(int, re.findall(rf"(\d+)/{STEPS}", self.err)), default=-1) < step:
            assert self.proc.poll() is None and time.monotonic() < deadline, self.err[-2000:]
            time.sleep(0.05)

    def stop(self, sig: int) -> tuple[int, str, str]:
        self.proc.send_signal(sig)
        out = self.proc.stdout.read()
        code = self.proc.wait(timeout=60)
        self._reader.join(timeout=10)
        return code, out, self.err


def test_ctrl_c_saves_and_the_printed_command_resumes(tmp_path: Path, capsys):
    generator = make_tiny_generator(tmp_path / "generator")
    data = make_synthetic_dataset(tmp_path / "data", 1, 32).parent
    out = tmp_path / "run"
    argv = ["train", "--config", str(CONFIG), "--set", f"model.path={generator}", "--set", f"data.file={data}",
            "--set", f"run.output_dir={out}", "--set", f"run.steps={STEPS}", "--set", f"run.save_every={STEPS}",
            "--set", f"run.image_every={STEPS}", "--set", "sft.validation_items=1"]
    first = Run(argv)
    first.wait_for_step(2)
    code, _, err = first.stop(signal.SIGINT)
    assert code == 130, err[-2000:]
    assert "Traceback" not in err
    stopped = re.search(rf"psr train: SIGINT: stopped after step (\d+) of {STEPS}; checkpoint saved to (\S+)", err)
    assert stopped, err[-2000:]
    step, checkpoint = int(stopped.group(1)), Path(stopped.group(2))
    assert step >= 2 and checkpoint == out / "checkpoints" / f"step-{step:06d}" and checkpoint.is_dir()

    resume = err.split("resume with: ", 1)[1].splitlines()[0]
    words = shlex.split(resume)
    assert words[:2] == ["psr", "train"] and words[-1] == "--resume"
    more = [*words[2:-1], "--set", f"run.steps={step + 1}", "--no-progress", "--resume"]  # one more step
    assert psr(["train", *more]) == 0
    assert f"step {step + 1}: loss" in capsys.readouterr().out
    assert (out / "checkpoints" / f"step-{step + 1:06d}").is_dir()
