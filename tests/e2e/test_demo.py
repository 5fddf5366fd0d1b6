"""The README's first command: ``psr demo`` on a fresh folder, as a user runs it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests.servers import REPO, psr_command, repo_env

pytestmark = pytest.mark.slow


def test_psr_demo_trains_and_writes_logs_grid_and_checkpoint(tmp_path: Path):
    earlier = tmp_path / "run" / "checkpoints" / "step-000009"  # an earlier demo's run, with more steps
    earlier.mkdir(parents=True)
    (earlier / "trainer_state.json").write_text('{"step": 9, "config_hash": "earlier"}')
    out = subprocess.run(
        psr_command("--log-level", "WARNING", "demo", "--workdir", str(tmp_path), "--steps", "2"),
        env=repo_env(), cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    for stage in ("[1/4]", "[2/4]", "[3/4]", "[4/4]"):
        assert stage in out.stdout
    assert "mean reward" in out.stdout and "subject" in out.stdout
    assert (tmp_path / "models" / "rewards.yaml").is_file()
    assert list((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))
    grids = sorted((tmp_path / "run" / "samples").glob("*.png"))
    assert grids and Image.open(grids[-1]).size[0] > 0
    # a new demo replaces the earlier run instead of mixing with it (its step 9 would pass for the newest)
    assert "replacing the previous demo run" in out.stdout
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-000002"]
    assert f"checkpoint:       {tmp_path / 'run' / 'checkpoints' / 'step-000002'}" in out.stdout
    assert "Traceback" not in out.stderr
