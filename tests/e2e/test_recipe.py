"""The whole recipe on tiny models, as a user runs it: ``psr demo --recipe`` (psr datagen -> SFT -> GRPO
from the SFT LoRA -> export -> PSRBench generate + score)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from shared.cli import main as psr
from tests.servers import REPO, psr_command, repo_env
from trainer.recipe import PAPER_MIX, reference_mix

pytestmark = pytest.mark.slow


def test_psr_demo_recipe_runs_every_stage(tmp_path: Path, capsys):
    args = ("--log-level", "WARNING", "demo", "--recipe", "--workdir", str(tmp_path), "--sft-steps", "2",
            "--items", "6", "--steps", "1")
    out = subprocess.run(psr_command(*args), env=repo_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    for stage in range(1, 7):
        assert f"[{stage}/6]" in out.stdout
    # stage 1 is psr datagen on the tiny config: its summary, its dataset with provenance
    assert "6 items:" in out.stdout and (tmp_path / "data" / "summary.json").is_file()
    items = json.loads((tmp_path / "data" / "dataset.json").read_text())
    assert items and all("target_path" in it and "provenance" in it for it in items)
    counts = sorted({len(it["input_path"]) for it in items})
    mix = reference_mix([len(it["input_path"]) for it in items])
    assert sorted(mix) == [k for k in counts if k in PAPER_MIX] and f"references mixed {mix}" in out.stdout
    sft = tmp_path / "sft" / "checkpoints" / "step-000002"
    grpo = tmp_path / "grpo" / "checkpoints" / "step-000001"
    assert json.loads((grpo / "lora.json").read_text())["init_lora"].startswith(str(sft))
    assert (tmp_path / "sft" / "samples" / "step-000000.png").is_file()  # validation grid before training
    assert (tmp_path / "export" / "model_index.json").is_file()
    results = json.loads((tmp_path / "bench-gen" / "results.json").read_text())
    assert results["meta"]["guidance"] == 1.0  # the guidance the tiny configs train with, not bench's 2.5
    assert sum(len(v) for v in results["subsets"].values()) == len(items)
    table = (tmp_path / "bench" / "table.md").read_text()
    assert "| Overall" in table and "| Overall" in out.stdout
    summary = json.loads((tmp_path / "bench" / "summary.json").read_text())
    assert summary["table"]["Overall"]["sc"] is not None
    # a second run into the same folder is refused up front (before any model loads), naming what is there
    assert psr(list(args)) == 2
    err = capsys.readouterr().err
    assert err.startswith("psr demo: ") and "already holds a recipe run (data, sft, grpo" in err


def test_recipe_mix_is_the_papers_over_the_counts_present():
    assert reference_mix([2, 3, 4, 2]) == PAPER_MIX
    assert reference_mix([2, 2, 3]) == {2: round(0.9 / 0.95, 4), 3: round(0.05 / 0.95, 4)}
    assert reference_mix([2]) == {2: 1.0}
