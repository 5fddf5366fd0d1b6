"""The whole recipe on tiny models, as a user runs it: ``psr demo --recipe`` (data -> SFT -> GRPO from the
SFT LoRA -> export -> PSRBench generate + score)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.servers import REPO, psr_command, repo_env

pytestmark = pytest.mark.slow


def test_psr_demo_recipe_runs_every_stage(tmp_path: Path):
    out = subprocess.run(
        psr_command("--log-level", "WARNING", "demo", "--recipe", "--workdir", str(tmp_path), "--sft-steps", "2", "--items", "1",
                    "--steps", "1"),
        env=repo_env(), cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    for stage in range(1, 7):
        assert f"[{stage}/6]" in out.stdout
    items = json.loads((tmp_path / "data" / "dataset.json").read_text())
    assert {len(it["input_path"]) for it in items} == {2, 3, 4} and all("target_path" in it for it in items)
    sft = tmp_path / "sft" / "checkpoints" / "step-000002"
    grpo = tmp_path / "grpo" / "checkpoints" / "step-000001"
    assert json.loads((grpo / "lora.json").read_text())["init_lora"].startswith(str(sft))
    assert (tmp_path / "sft" / "samples" / "step-000000.png").is_file()  # validation grid before training
    assert (tmp_path / "export" / "model_index.json").is_file()
    results = json.loads((tmp_path / "bench-gen" / "results.json").read_text())
    assert sum(len(v) for v in results["subsets"].values()) == len(items)
    table = (tmp_path / "bench" / "table.md").read_text()
    assert "| Overall" in table and "| Overall" in out.stdout
    summary = json.loads((tmp_path / "bench" / "summary.json").read_text())
    assert summary["table"]["Overall"]["sc"] is not None
